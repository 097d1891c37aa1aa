"""Placeholder: initializers (issue 4, in progress)."""
