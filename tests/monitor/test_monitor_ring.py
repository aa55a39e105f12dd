"""The monitor's bounded memory: ring buffer of named columns."""

import numpy as np
import pytest

from streamer.monitor.ring import RingColumns


def test_ring_keeps_newest_rows_in_order_across_wraps():
    ring = RingColumns(7, {"a": np.int64, "b": np.float32})
    pushed = []
    for start, n in [(0, 3), (3, 3), (6, 5), (11, 1), (12, 20), (32, 2)]:
        vals = np.arange(start, start + n)
        ring.push(a=vals, b=vals.astype(np.float32) / 2)
        pushed.extend(vals)
        expect = np.array(pushed[-7:])
        assert len(ring) == len(expect)
        np.testing.assert_array_equal(ring.column("a"), expect)
        np.testing.assert_array_equal(ring.column("b"), expect / 2)
        np.testing.assert_array_equal(ring.column("a", last=2), expect[-2:])
    assert ring.total == len(pushed)


def test_ring_rejects_mismatched_columns():
    ring = RingColumns(4, {"a": np.int64, "b": np.int64})
    with pytest.raises(ValueError, match="columns"):
        ring.push(a=np.arange(3))
    with pytest.raises(ValueError, match="length"):
        ring.push(a=np.arange(3), b=np.arange(2))
    with pytest.raises(ValueError):
        RingColumns(0, {"a": np.int64})


def test_columns_with_array_rows_wrap_like_scalar_ones():
    """A (dtype, row shape) column keeps whole rows through wrap-around and overflow."""
    ring = RingColumns(5, {"a": np.int64, "m": (np.float64, (2, 4))})
    rows = np.arange(7 * 8, dtype=np.float64).reshape(7, 2, 4)
    ring.push(a=np.arange(3), m=rows[:3])
    ring.push(a=np.arange(3, 7), m=rows[3:])
    assert list(ring.column("a")) == [2, 3, 4, 5, 6]
    assert np.array_equal(ring.column("m"), rows[2:]) and np.array_equal(ring.column("m", last=2), rows[5:])
    ring.push(a=np.arange(10), m=np.arange(80, dtype=np.float64).reshape(10, 2, 4))  # more than the capacity
    assert np.array_equal(ring.column("m")[:, 0, 0], [40.0, 48.0, 56.0, 64.0, 72.0])
