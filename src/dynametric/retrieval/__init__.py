"""dynametric.retrieval."""
