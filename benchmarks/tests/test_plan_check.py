"""gradproj plan's peak-memory estimate against the measured peak of torch's allocations
(within 25%) at several sizes (benchmarks.harness.scale.check_plan runs the stages)."""

from __future__ import annotations

import pytest

from benchmarks.harness.scale import PLAN_SIZES, check_plan


@pytest.mark.parametrize("size", PLAN_SIZES, ids=lambda s: "-".join(map(str, s)))
def test_peak_memory_estimate_within_25_percent(size):
    row = check_plan(size)
    for stage in ("train", "build"):
        assert abs(row[stage]["error"]) <= 0.25, (stage, row[stage])
