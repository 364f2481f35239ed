"""HTTP handlers, one module per tag; each function is named by an operationId in the spec."""
