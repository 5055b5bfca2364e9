"""dynametric.engine."""
