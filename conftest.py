"""Repository-root pytest configuration: registers the shared fixture plugins and the
hypothesis profile every property test runs under."""

from hypothesis import HealthCheck, settings

pytest_plugins = ["tests.kube.fixtures"]

# Hypothesis's per-example deadline (200 ms) and its too-slow health check time the machine, not
# the code: on 2 loaded cores an example of a pure function took 257 ms and failed the run. The
# properties are what these tests check; the suite's timeout bounds a test that hangs.
settings.register_profile("dynaps", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("dynaps")
