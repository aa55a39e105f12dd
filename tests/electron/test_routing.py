"""The entry-point routing: easy events (error scale <= the bundle's ``scale_max``) go through the
specialist point boosters, the rest through the general ones, each event through exactly one pair."""

import numpy as np

from streamer.modalities.electron.model import TreeModel, routed_point


def _const(v, calls):
    def f(X):
        calls.append(len(X))
        return np.full(len(X), v, np.float32)
    return f


def test_routing_sends_each_event_through_one_pair():
    X = np.zeros((7, 3), np.float32)
    s = np.array([0.1, 0.9, 0.5, 0.5001, 2.0, 0.2, 0.3], np.float32)
    calls = []
    cx, cy = routed_point(X, s, (_const(1, calls), _const(2, calls)), (_const(-1, calls), _const(-2, calls)), 0.5)
    easy = s <= np.float32(0.5)
    assert (cx == np.where(easy, -1, 1)).all() and (cy == np.where(easy, -2, 2)).all()
    assert sorted(calls) == [3, 3, 4, 4]  # 4 easy rows (0.5 included) through the specialist pair, 3 not
    calls.clear()
    cx, cy = routed_point(X, s, (_const(1, calls), _const(2, calls)))
    assert (cx == 1).all() and (cy == 2).all() and calls == [7, 7]


def test_shipped_bundle_routes_on_its_own_scale_booster():
    """Served predictions = the bundle's XGBoost boosters composed by hand (specialist below scale_max)."""
    import xgboost as xgb

    model = TreeModel(kind="xgboost")
    spec = model.manifest.get("specialist")
    assert spec is not None and 0 < spec["scale_max"]
    rng = np.random.default_rng(3)
    win = rng.normal(0, 20, (400, 13, 13)).astype(np.float32)
    win[:, 6, 6] += rng.uniform(100, 1500, 400).astype(np.float32)  # an event's peak at the window centre
    win[:, 6, 7] += rng.uniform(0, 600, 400).astype(np.float32)
    out = model.predict_windows_all(win)
    from streamer.modalities.electron.features import features, from_canonical

    X, fx, fy, tr = features(win, model.params.threshold_e, None)
    d = model.manifest["_dir"]
    b = {r: xgb.Booster(model_file=f"{d}/{r}.ubj") for r in ("dx", "dy", "sdx", "sdy", "scale")}
    s = np.maximum(b["scale"].inplace_predict(X), 1e-3)
    easy = s <= np.float32(spec["scale_max"])
    assert 0 < easy.sum() < len(X)  # both routes taken
    cx = np.where(easy, b["sdx"].inplace_predict(X), b["dx"].inplace_predict(X))
    cy = np.where(easy, b["sdy"].inplace_predict(X), b["dy"].inplace_predict(X))
    dx, dy = from_canonical(cx, cy, fx, fy, tr)
    np.testing.assert_allclose(out["dx"], dx, atol=1e-5)
    np.testing.assert_allclose(out["dy"], dy, atol=1e-5)
