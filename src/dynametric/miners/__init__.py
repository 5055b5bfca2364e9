"""dynametric.miners."""
