"""Synthetic trade ingestion: a bounded random walk written to PostgreSQL in batches."""
