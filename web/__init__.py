"""What the composing package and the handlers share about serving a request, owned by neither."""
