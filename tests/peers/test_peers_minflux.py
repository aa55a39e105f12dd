"""pyMINFLUX vs our Abberior loader: field-by-field parity on a tiny synthetic export, and units / x-y order.

pyMINFLUX runs in its own virtualenv (bench/peers/README.md); the peer tests skip when it is absent (CI).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


sys.path.insert(0, str(ROOT / "bench" / "peers"))  # bench/ is no package
bench = importlib.import_module("minflux_pyminflux")
needs_peer = pytest.mark.skipif(not bench.peer_available(),
                                reason="pyMINFLUX virtualenv absent (see bench/peers/README.md)")
N, HALF_L = 12, 15.0


@pytest.fixture
def export_array():
    rng = np.random.default_rng(11)
    counts = rng.integers(0, 60, (N, 2, 3))
    centre = rng.uniform(-800, 800, (N, 2))
    centre[:, 1] += 5000.0  # y far from x: an x/y swap cannot pass
    tid = np.repeat(np.arange(N // 3), 3) + 7
    tim = np.arange(N) * 1e-3 + 0.25
    vld = np.arange(N) % 5 != 2
    return dict(counts=counts, centre=centre, tid=tid, tim=tim, vld=vld)


def _write(tmp_path, t, name):
    return bench.write_export(tmp_path / name, t["counts"], t["centre"], HALF_L, t["tid"], t["tim"], t["vld"], seed=1)


def test_single_emitter_offset_recovers_a_known_position():
    # one emitter at a known offset from the pattern centre, noiseless counts: the harmonic phase is exact
    from streamer.modalities.minflux import physics

    x_true = np.array([[4.0, -7.5]])
    pos = physics.beam_positions(np.zeros((1, 2)), HALF_L)
    mu = physics.expected_counts(pos, x_true, x_true, 100.0, np.ones(1), np.zeros(1), np.ones(1), np.zeros(1))
    np.testing.assert_allclose(bench.single_emitter_offset(mu, HALF_L), x_true, atol=1e-6)


def test_our_loader_reads_the_bench_export(tmp_path, export_array):
    from streamer.modalities.minflux.loaders.abberior import load_abberior

    t = export_array
    arr = _write(tmp_path, t, "e.mat")
    rec, report = load_abberior(tmp_path / "e.mat")
    v = t["vld"]
    assert report["kept"] == int(v.sum())
    np.testing.assert_array_equal(rec.tuples.counts, t["counts"][v])
    # beam centre = loc - lc: the pattern centre we wrote, in nm, x then y
    np.testing.assert_allclose(rec.tuples.positions[:, :, 1], t["centre"][v], atol=1e-3)
    np.testing.assert_allclose(rec.tuples.positions[:, :, 2] - rec.tuples.positions[:, :, 1], HALF_L, atol=1e-3)
    np.testing.assert_array_equal(rec.tuples.trace_id, t["tid"][v])
    assert arr["itr"]["phe"].shape == (N, bench.ITERS, 6)


@needs_peer
@pytest.mark.parametrize("name,with_counts", [("e.mat", True), ("std.npy", False)])
def test_field_by_field_parity_with_pyminflux(tmp_path, export_array, name, with_counts):
    from streamer.modalities.minflux.loaders.abberior import read_export

    t = export_array
    arr = _write(tmp_path, t, "full.mat")
    bench.save_export(tmp_path / name, arr, with_counts=with_counts)
    peer = bench.run_peer(tmp_path / name, tmp_path)
    v = t["vld"]
    assert len(peer["col_tid"]) == int(v.sum())  # pyMINFLUX keeps the valid rows, as we do
    par = bench.parity(peer, tmp_path / name)
    assert set(par) == set(bench.PARITY)
    for field, diff in par.items():
        assert diff <= 1e-6, (field, diff)
    # units and order: pyMINFLUX x, y (nm) = our beam centre + lc (m -> nm), x first
    f = read_export(tmp_path / name).fields
    lc = np.stack([np.asarray(f["lcx"])[v], np.asarray(f["lcy"])[v]], axis=1) * 1e9
    np.testing.assert_allclose(np.column_stack([peer["col_x"], peer["col_y"]]), t["centre"][v] + lc, atol=1e-6)


@needs_peer
def test_pyminflux_refuses_npy_with_extra_field(tmp_path, export_array):
    # measured behaviour of pyMINFLUX 0.7.0 that decides the bench's file format (.mat): documented, so checked
    t = export_array
    _write(tmp_path, t, "phe.npy")
    assert bench.peer_reads(tmp_path / "phe.npy", tmp_path).startswith("no: no field of name phe")
