"""A complete refws adapter: a float32 NumPy convolution, forward only, tap by tap.

refws check examples.adapters.numpy_float32:NumpyFloat32     # from the repository root
"""

import numpy as np

import refws
from refws.conformance import NotExpressible


class NumpyFloat32:
    name, precision, version = "numpy-float32", "float32", np.__version__

    def conv(self, x, w, stride, padding, lhs_dilation, rhs_dilation, groups, *, channel_first):
        if channel_first or x.ndim != w.ndim:
            raise NotExpressible("this example takes batched channels-last input only")
        g = refws.conv_geometry(x.shape[1:-1], w.shape[:-2], stride, padding, lhs_dilation, rhs_dilation)
        x, w = x.astype(np.float32), w.astype(np.float32)
        # 1. lhs dilation: lhs_dilation - 1 zeros between neighbouring inputs
        size = [(n - 1) * d + 1 for n, d in zip(x.shape[1:-1], g.lhs_dilation)]
        xd = np.zeros((x.shape[0], *size, x.shape[-1]), np.float32)
        xd[(slice(None), *(slice(None, None, d) for d in g.lhs_dilation))] = x
        # 2. pad (positive) or crop (negative) both ends of every spatial axis
        for ax, (lo, hi) in enumerate(g.padding, start=1):
            xd = np.pad(xd, [(max(lo, 0), max(hi, 0)) if a == ax else (0, 0) for a in range(xd.ndim)])
            xd = xd[(slice(None),) * ax + (slice(max(-lo, 0), xd.shape[ax] - max(-hi, 0)),)]
        # 3. one strided slice per kernel tap, times that tap's weights, group by group
        cin, cout = w.shape[-2], w.shape[-1] // groups
        y = np.zeros((x.shape[0], *g.out_spatial, w.shape[-1]), np.float32)
        for tap in np.ndindex(*w.shape[:-2]):
            window = tuple(
                slice(t * d, t * d + (o - 1) * s + 1, s)
                for t, d, o, s in zip(tap, g.rhs_dilation, g.out_spatial, g.stride)
            )
            xs = xd[(slice(None), *window)]
            for k in range(groups):
                y[..., k * cout : (k + 1) * cout] += (
                    xs[..., k * cin : (k + 1) * cin] @ w[tap][:, k * cout : (k + 1) * cout]
                )
        return y
