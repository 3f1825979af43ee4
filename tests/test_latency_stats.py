from __future__ import annotations

import numpy as np
import pytest

from litegate.timing import measure, percentile, summarize


@pytest.mark.parametrize("samples", [[5.0], [1.0, 2.0], [3.0, 1.0, 2.0, 10.0, 4.0], list(np.random.default_rng(0).gamma(2, 3, 997))])
def test_summarize_matches_numpy(samples):
    s = summarize(samples)
    arr = np.array(samples)
    for q, got in ((50, s.p50), (90, s.p90), (99, s.p99)):
        assert got == pytest.approx(np.percentile(arr, q))
    assert s.mean == pytest.approx(arr.mean())
    assert s.std == pytest.approx(arr.std(ddof=1) if len(arr) > 1 else 0.0)
    assert (s.min, s.max, s.n) == (arr.min(), arr.max(), len(arr))


def test_percentile_of_known_set():
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([10, 20], 90) == 19.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_measure_honours_min_runs_and_cycles_inputs():
    seen = []
    first, samples = measure(seen.append, [1, 2, 3], {"warmup_runs": 2, "min_runs": 7, "min_seconds": 0, "max_runs": 100})
    assert len(samples) == 7 and first >= 0
    assert seen[:3] == [1, 1, 2]  # first inference, then the warm-up cycles from the start
    assert seen[3:] == [1, 2, 3, 1, 2, 3, 1]
