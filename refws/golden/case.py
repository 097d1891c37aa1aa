"""A golden case: a stable name, a suite, JSON parameters, its input grid and the derivatives it stores."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Case", "SUITES", "DERIVATIVES", "DEFAULT_DERIVATIVES"]

SUITES = ("conv", "conv_transpose", "ws", "brainstate", "elektronn3")

#: What a case can store beyond the forward output: the VJP (a cotangent and the input
#: gradients) and the JVP (tangents and the output tangent).
DERIVATIVES = ("vjp", "jvp")
DEFAULT_DERIVATIVES = DERIVATIVES


@dataclass(frozen=True)
class Case:
    """One golden case. ``params`` holds only JSON values (lists, not tuples).

    ``bits`` names the input grid (:data:`refws.golden.rng.GRIDS`; 12 is the historical one) and
    ``derivatives`` what is stored besides the forward output: a subset of ``("vjp", "jvp")``.
    """

    name: str
    suite: str
    params: dict = field(hash=False)
    bits: int = 12
    derivatives: tuple = DEFAULT_DERIVATIVES

    @property
    def grid(self):
        from .rng import grid_of
        return grid_of(self.bits)

    def stores(self, derivative: str) -> bool:
        """Whether the case stores ``"vjp"`` or ``"jvp"`` arrays."""
        return derivative in self.derivatives
