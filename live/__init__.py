"""Live trades in memory: hearing committed batches and fanning them out to open streams."""
