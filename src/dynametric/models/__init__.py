"""dynametric.models."""
