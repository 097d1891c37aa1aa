"""refws: a pure-NumPy reference for convolution and weight-standardized layers.

Core math is channels-last: input ``(N, *spatial, C)``, kernel ``(*kernel, C_in // groups, C_out)``.
Everything is computed in float64. See README.md and docs/ for the definitions.
"""

__version__ = "0.1.0"

from .geometry import ConvGeometry, conv_geometry
from .im2col import col2im, get_workspace_bytes, im2col, set_workspace_bytes
from .conv import conv
from .grads import (
    bias_vjp,
    conv_jvp,
    conv_transpose,
    conv_transpose_lax,
    conv_transpose_lax_vjp,
    conv_transpose_vjp,
    conv_vjp,
)
from .ws import WS_PRESETS, WSSpec, weight_standardize, weight_standardize_jvp, weight_standardize_vjp
from .pad import pad, pad_vjp
from . import init, nn

__all__ = [
    "ConvGeometry",
    "conv_geometry",
    "im2col",
    "col2im",
    "set_workspace_bytes",
    "get_workspace_bytes",
    "conv",
    "conv_vjp",
    "conv_jvp",
    "bias_vjp",
    "conv_transpose",
    "conv_transpose_vjp",
    "conv_transpose_lax",
    "conv_transpose_lax_vjp",
    "WSSpec",
    "WS_PRESETS",
    "weight_standardize",
    "weight_standardize_vjp",
    "weight_standardize_jvp",
    "pad",
    "pad_vjp",
    "init",
    "nn",
]
