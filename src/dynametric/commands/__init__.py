"""Subcommands of the ``dynametric`` CLI; each module has ``register(subparsers)``."""
