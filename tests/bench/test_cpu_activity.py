"""bench/cpu_activity.py: a profile's own times summed by activity, time outside dynaps
split among its callers' activities, the profiler's own cost left out."""

from __future__ import annotations

import pytest

from . import scripts

cpu_activity = scripts.load("cpu_activity")

DECODE = ("/x/runtime/dynaps/wire/messages.py", 10, "decode")
SEND = ("/x/runtime/dynaps/wire/tcp_outbound.py", 20, "send")
STEP = ("/x/runtime/dynaps/apps/mf.py", 30, "_sgd_steps")
ADD_AT = ("~", 0, "<method 'at' of 'numpy.ufunc' objects>")
COPY = ("~", 0, "<built-in method numpy.copy>")
SNAPSHOT = ("/x/runtime/dynaps/profiling.py", 40, "snapshot")
HELPER = ("/x/runtime/dynaps/newmodule.py", 50, "helper")


def test_activities_by_module_and_outside_time_by_caller() -> None:
    own = {DECODE: 1.0, SEND: 2.0, STEP: 3.0, ADD_AT: 4.0, COPY: 0.5, SNAPSHOT: 9.0}
    callers = {
        ADD_AT: {STEP: 3.0, DECODE: 1.0},  # three quarters of its time under training
        COPY: {ADD_AT: 0.5},  # outside dynaps twice: the mix of its caller's callers
    }
    unattributed: dict[str, float] = {}
    totals = cpu_activity.by_activity(own, callers, unattributed)
    assert totals["codec (encode/decode, bodies)"] == pytest.approx(1.0 + 1.0 + 0.125)
    assert totals["transport (send/recv)"] == pytest.approx(2.0)
    assert totals["training (model, data)"] == pytest.approx(3.0 + 3.0 + 0.375)
    assert cpu_activity.PROFILER not in totals  # the snapshots' own cost is left out
    assert sum(totals.values()) == pytest.approx(10.5)
    assert unattributed == {}


def test_a_dynaps_module_no_activity_names_is_reported_by_name() -> None:
    unattributed: dict[str, float] = {}
    totals = cpu_activity.by_activity({HELPER: 0.25}, {}, unattributed)
    assert totals == {cpu_activity.UNATTRIBUTED: 0.25}
    assert unattributed == {"newmodule.py:50:helper": 0.25}


def test_time_with_no_caller_outside_dynaps_is_unattributed() -> None:
    totals = cpu_activity.by_activity({ADD_AT: 1.0}, {}, {})
    assert totals == {cpu_activity.UNATTRIBUTED: 1.0}
