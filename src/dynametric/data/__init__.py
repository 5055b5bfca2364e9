"""dynametric.data."""
