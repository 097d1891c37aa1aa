"""Placeholder: hand-derived VJPs/JVPs and transposed convolution (issue 3, in progress)."""


def _todo(*args, **kwargs):
    raise NotImplementedError("refws.grads is not written yet (issue 3)")


conv_vjp = conv_jvp = bias_vjp = conv_transpose = conv_transpose_vjp = _todo
