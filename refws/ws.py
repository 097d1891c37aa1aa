"""Placeholder: weight standardization (issue 4, in progress)."""

WS_PRESETS = {}


class WSSpec:  # replaced by the real frozen dataclass
    pass


def _todo(*args, **kwargs):
    raise NotImplementedError("refws.ws is not written yet (issue 4)")


weight_standardize = weight_standardize_vjp = weight_standardize_jvp = _todo
