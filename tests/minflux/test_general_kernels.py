"""The compiled pass of the general model's features agrees with its numpy reference bit for bit."""

import numpy as np
import pytest

from streamer.modalities.minflux import general_kernels as gk
from streamer.modalities.minflux import general, offgrid
from streamer.modalities.minflux.tuples import count_totals

pytestmark = pytest.mark.skipif(not gk.HAVE_NUMBA, reason="the features are the numpy reference without numba")


def _same(a, b):
    return np.array_equal(a, b, equal_nan=True)


@pytest.mark.parametrize("v0, background, seed", [(0.93, 2.0, 1), (1.0, 0.2, 2), (0.8, 8.0, 3)])
def test_features_match_numpy_on_simulated_tuples(v0, background, seed):
    t = offgrid.simulate_stream(v0, background, 40, seed=seed).tuples
    n = len(t)
    cases = [(v0, background),  # one value for the stream (the live path)
             (np.linspace(0.8, 1.0, n).astype(np.float32), np.linspace(0.2, 8.0, n).astype(np.float32))]
    for vv, bb in cases:
        fast = general.instrument_features(t.counts, t.positions, vv, bb)
        ref = general.instrument_features_numpy(t.counts, t.positions, vv, bb, count_totals(t.counts))
        assert fast.dtype == np.float32 and fast.shape == (n, len(general.GENERAL_FEATURES))
        bad = ~((fast == ref) | (np.isnan(fast) & np.isnan(ref)))
        assert not bad.any(), f"columns differ: {dict(zip(general.GENERAL_FEATURES, bad.sum(axis=0)))}"


def test_features_match_numpy_at_the_edges():
    """Dark and saturated tuples, a background above the counts (non-positive levels), uneven patterns."""
    rng = np.random.default_rng(5)
    n = 20_000
    c = rng.integers(0, 6, (n, 2, 3)).astype(np.uint16)
    c[:500] = 0
    c[500:1000] = 65535
    pos = (np.array([-15.0, 0.0, 15.0], np.float32) * rng.uniform(0.5, 1.7, (n, 2, 1))
           + rng.normal(0.0, 50.0, (n, 2, 1))).astype(np.float32)
    for v0, b in ((0.9, 1.0), (1.0, 50.0), (np.float32(0.85), np.float32(0.0))):
        fast = general.instrument_features(c, pos, v0, b)
        ref = general.instrument_features_numpy(c, pos, v0, b)
        assert _same(fast, ref)
    assert (general.instrument_features(c, pos, 1.0, 50.0)[:, 0] == 0).any()  # the level <= 0 branch ran


def test_non_integer_counts_take_the_reference():
    t = offgrid.simulate_stream(0.93, 2.0, 5, seed=9).tuples
    c = t.counts.astype(np.float32) + np.float32(0.25)
    assert gk.instrument_features(c, t.positions, 0.93, 2.0) is None
    assert _same(general.instrument_features(c, t.positions, 0.93, 2.0),
                 general.instrument_features_numpy(c, t.positions, 0.93, 2.0))


@pytest.fixture(scope="module")
def predictor():
    return general.GeneralPredictor()


def _inputs(gp, v0, background, seed, n_rulers=40):
    t = offgrid.simulate_stream(min(v0, 1.0), background, n_rulers, seed=seed).tuples
    n = len(t)
    v0 = np.broadcast_to(np.float32(v0), (n,))
    bg = np.broadcast_to(np.float32(background), (n,))
    X = general.instrument_features(t.counts, t.positions, v0, bg)
    raw = np.asarray(gp.backend.predict(X), np.float32).reshape(-1)
    info = general.pseudo_photons(np.asarray(gp.noise.predict(np.column_stack([X, raw])), np.float32).reshape(-1))
    hl = X[:, general._HALF_L]
    d = gp.deshrink.apply(raw, X[:, 8], v0, bg, hl)
    return raw, d, info, v0, bg, general.photons_of(X), np.ascontiguousarray(hl), np.exp(X[:, 9])


def _finish_both(gp, raw, d, ranged, info, v0, bg, photons, hl, neff):
    fast = gp._finish(raw, d, ranged, info, v0, bg, photons, hl, neff)
    ref = gp._finish_numpy(raw, d, ranged, info, v0, bg, photons, hl, neff)
    for a, b in zip(fast, ref):
        assert a.dtype == b.dtype and _same(a, b)
    return ref


@pytest.mark.parametrize("v0, background, seed", [(0.93, 2.0, 11), (1.0, 0.1, 12), (0.78, 9.0, 13), (1.02, 4.0, 14)])
def test_intervals_and_checks_match_numpy(predictor, v0, background, seed):
    """Inside and outside the trained instrument (0.78 / 9 / 1.02 / 0.1 lie outside its ranges)."""
    gp = predictor
    assert gp.intervals.compiled
    raw, d, info, v0a, bga, photons, hl, neff = _inputs(gp, v0, background, seed)
    for ranged in (raw, d):
        lo, hi, flags = _finish_both(gp, raw, d, ranged, info, v0a, bga, photons, hl, neff)
    assert np.isfinite(lo).any() or not (0.8 <= v0 <= 1.0 and 0.2 <= background <= 8.0)


def test_intervals_and_checks_match_numpy_at_their_edges(predictor):
    """Every threshold met exactly, one float32 step either side; distances outside every bin (the
    empty hull and its marginal fallback); photons and information at their limits."""
    gp = predictor
    raw, d, info, v0, bg, photons, hl, neff = (np.array(a) for a in _inputs(gp, 0.93, 2.0, 15))
    n = len(raw)
    lim = gp._limits
    up = lambda x: np.nextafter(np.float32(x), np.float32(np.inf))  # noqa: E731
    down = lambda x: np.nextafter(np.float32(x), np.float32(-np.inf))  # noqa: E731
    cases = {"photons": (photons, (0, 9)), "v0": (v0, (1, 2)), "background": (bg, (3, 4)), "half_l": (hl, (5, 6)),
             "neff": (neff, (10,)), "info": (info, (11,))}
    rng = np.random.default_rng(16)
    for name, (arr, idx) in cases.items():
        a = arr.copy()
        for j in idx:
            at = rng.choice(n, 60, replace=False)
            a[at[:20]], a[at[20:40]], a[at[40:]] = lim[j], up(lim[j]), down(lim[j])
        args = dict(raw=raw, d=d, ranged=d, info=info, v0=v0, bg=bg, photons=photons, hl=hl, neff=neff)
        args[{"half_l": "hl", "background": "bg"}.get(name, name)] = a
        _finish_both(gp, **args)
    far = raw.copy()
    far[::7] = np.float32(400.0)  # beyond every bin: the hull is empty
    far[1::7] = np.float32(-50.0)
    far[2::7] = np.float32(np.nan)
    lo, hi, flags = _finish_both(gp, far, d, far, info, v0, bg, photons, hl, neff)
    assert (flags[::7] & general.FLAG_OUT_OF_RANGE).all()


def test_predict_with_matches_the_numpy_path(predictor, monkeypatch):
    """The whole prediction: compiled features and checks against the references."""
    gp = predictor
    t = offgrid.simulate_stream(0.9, 3.0, 60, seed=17).tuples
    fast = gp.predict_with(t, 0.9, 3.0)
    monkeypatch.setattr(general.general_kernels, "HAVE_NUMBA", False)
    monkeypatch.setattr(gp.intervals, "compiled", False)
    ref = gp.predict_with(t, 0.9, 3.0)
    for name in ("distance", "lower", "upper", "flags"):
        assert _same(getattr(fast, name), getattr(ref, name)), name
