"""Hypothesis profiles: ``ci`` (derandomized, 300 examples per property) and ``dev`` (quick).

CI sets ``CI=true``, which selects ``ci``; otherwise ``dev`` is used. ``REFWS_PROFILE``
overrides both, e.g. ``REFWS_PROFILE=ci pytest``.
"""

import os

from hypothesis import HealthCheck, settings

_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=300, derandomize=True, print_blob=True, **_common)
settings.register_profile("dev", max_examples=25, **_common)

_default = "ci" if os.environ.get("CI", "").lower() in ("1", "true", "yes") else "dev"
settings.load_profile(os.environ.get("REFWS_PROFILE", _default))
