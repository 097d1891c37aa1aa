"""A refws adapter around jax's NumPy reference convolution, ``jax._src.lax_reference``.

Used by docs/conformance.md (section *Diagnosis*) as a worked example of a real peer bug:
``lax_reference.conv_general_dilated`` computes string padding (``'SAME'``) from the undilated
kernel, so SAME with ``rhs_dilation > 1`` gives the wrong pads and output size. Run::

    refws check examples.lax_reference_backend:LaxReference --suite conv --case 'conv/*rhs*'

It implements ``conv`` (and ``conv_jvp`` through the same function, which is bilinear); groups
are not expressible (lax_reference has no ``feature_group_count``).
"""

from __future__ import annotations

import numpy as np

from refws.conformance import NotExpressible
from refws.geometry import as_int_tuple, conv_geometry


class LaxReference:
    name = "jax lax_reference"
    precision = "float64"

    def __init__(self):
        import jax
        from jax._src import lax_reference

        self.version = jax.__version__
        self._conv = lax_reference.conv_general_dilated

    def conv(self, x, w, stride, padding, lhs_dilation, rhs_dilation, groups, *, channel_first):
        if groups != 1:
            raise NotExpressible("lax_reference.conv_general_dilated has no feature groups")
        nd = np.ndim(w) - 2
        unbatched = np.ndim(x) == nd + 1
        if unbatched:
            x = x[None]
        letters = "HWD"[:nd] if nd <= 3 else None
        if letters is None:
            raise NotExpressible(f"{nd} spatial dimensions")
        data = ("NC" + letters) if channel_first else ("N" + letters + "C")
        if not isinstance(padding, str):    # ints, per-axis ints, one pair: lax_reference takes only pairs
            spatial = x.shape[2:] if channel_first else x.shape[1:-1]
            padding = list(conv_geometry(spatial, np.shape(w)[:-2], stride, padding, lhs_dilation,
                                         rhs_dilation).padding)
        stride, lhs_dilation, rhs_dilation = (as_int_tuple(v, nd, name) for v, name in (
            (stride, "stride"), (lhs_dilation, "lhs_dilation"), (rhs_dilation, "rhs_dilation")))
        y = self._conv(x, w, stride, padding, lhs_dilation, rhs_dilation, (data, letters + "IO", data))
        return np.asarray(y)[0] if unbatched else np.asarray(y)

    def conv_jvp(self, x, w, tx, tw, stride, padding, lhs_dilation, rhs_dilation, groups, *, channel_first):
        args = (stride, padding, lhs_dilation, rhs_dilation, groups)
        y = self.conv(x, w, *args, channel_first=channel_first)
        return y, self.conv(tx, w, *args, channel_first=channel_first) + self.conv(x, tw, *args,
                                                                                    channel_first=channel_first)
