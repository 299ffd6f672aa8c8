"""Settings shared by the whole suite.

Hypothesis: no per-example deadline (timing is for bench/, never for tests), and a fixed
example budget so CI time stays bounded; ``HYPOTHESIS_PROFILE=thorough`` runs many more.  Under
CI (``CI`` set) the examples are derandomized: the same generated cases every run, so a run is
repeatable; a developer's runs draw new cases each time and keep the failures they find.
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "default",
    deadline=None,
    max_examples=200,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=bool(os.environ.get("CI")),
)
settings.register_profile(
    "thorough",
    deadline=None,
    max_examples=5000,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
