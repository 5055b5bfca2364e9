"""dynametric.metrics."""
