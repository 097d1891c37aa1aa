"""Placeholder: padding modes (issue 4, in progress)."""


def pad(*args, **kwargs):
    raise NotImplementedError("refws.pad is not written yet (issue 4)")
