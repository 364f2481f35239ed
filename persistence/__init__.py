"""Persistence: engine, schema, migrations and every SQL statement the service runs."""
