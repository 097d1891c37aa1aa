"""Layer mirrors: NumPy (float64) versions of brainstate's and elektronn3's convolution and WS layers.

Each mirror takes the original's constructor arguments (plus a keyword-only ``rng`` for the initial
values), keeps its parameters as plain arrays in ``layer.params`` under the original's names and
shapes (settable, shape-checked, for replaying a backend's weights), and offers ``layer(x)`` and
``layer.vjp(x, dy) -> (dx, grads)`` with ``grads`` keyed like ``params``. See docs/layers.md.

brainstate 0.6.0 (channels-last by default, HWIO kernels):
    Conv1d, Conv2d, Conv3d, ScaledWSConv1d, ScaledWSConv2d, ScaledWSConv3d, ConvTranspose1d, ConvTranspose2d,
    ConvTranspose3d, Linear, ScaledWSLinear
elektronn3 0.1.1 (PyTorch NCHW / OIHW):
    WSConv1d, WSConv2d, WSConv3d, WSConvTranspose2d, WSConvTranspose3d, FWS
"""

from . import brainstate, elektronn3
from .base import Layer, ParamDict
from .brainstate import (
    Conv,
    Conv1d,
    Conv2d,
    Conv3d,
    ConvTranspose,
    ConvTranspose1d,
    ConvTranspose2d,
    ConvTranspose3d,
    Linear,
    ScaledWSConv,
    ScaledWSConv1d,
    ScaledWSConv2d,
    ScaledWSConv3d,
    ScaledWSLinear,
)
from .elektronn3 import FWS, WSConv, WSConv1d, WSConv2d, WSConv3d, WSConvTranspose, WSConvTranspose2d, WSConvTranspose3d

__all__ = [
    "brainstate",
    "elektronn3",
    "Layer",
    "ParamDict",
    "Conv",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ScaledWSConv",
    "ScaledWSConv1d",
    "ScaledWSConv2d",
    "ScaledWSConv3d",
    "ConvTranspose",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    "Linear",
    "ScaledWSLinear",
    "WSConv",
    "WSConv1d",
    "WSConv2d",
    "WSConv3d",
    "WSConvTranspose",
    "WSConvTranspose2d",
    "WSConvTranspose3d",
    "FWS",
]
