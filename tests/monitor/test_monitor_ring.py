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
