"""Placeholder: layer mirrors of brainstate and elektronn3 (issue 4, in progress)."""
