"""Vectorized ground-truth simulator for two-emitter MINFLUX rulers (DESIGN.md section 1).

Two regimes:
* ``static``: many rulers, d ~ U(6, 30) nm, random in-plane orientation, a photon budget of
  ~84-108 photons per tuple (the instrument stops each tuple near a photon threshold).
* ``dynamic``: long traces at d in {15, 20, 30} nm, 1 tuple/ms, fixed exposure whose 2-on
  brightness gives ~198 photons (right-skewed), with 2-on -> 1-on -> background-only states
  and a drifting centre estimate.
Parameters drawn per ruler/trace are expanded to tuples with np.repeat; no Python loop per tuple.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from . import physics
from .recording import Recording
from .tuples import TupleBatch

STATE_BACKGROUND, STATE_ONE, STATE_TWO = 0, 1, 2


@dataclass
class InstrumentParams:
    """Instrument calibration plus the per-ruler spread the simulator draws from."""

    half_l_nm: float = physics.HALF_L_NM
    v0: float = 1.0  # calibrated single-emitter visibility of the instrument
    v0_jitter: float = 0.0  # per-ruler spread (uniform +-) around v0, clipped to <= 1
    background_range: tuple[float, float] = (0.5, 2.0)  # counts per exposure, per ruler
    brightness_ratio_range: tuple[float, float] = (0.8, 1.0)  # g2/g1 per ruler
    centre_error_nm: float = 3.0  # sd of the centre estimate around the pair's midpoint


@dataclass
class StaticParams:
    d_range_nm: tuple[float, float] = (6.0, 30.0)
    photons_range: tuple[float, float] = (84.0, 108.0)  # per-ruler mean photon budget
    photon_cv: float = 0.1  # per-tuple spread of the budget


@dataclass
class DynamicParams:
    distances_nm: tuple[float, ...] = (15.0, 20.0, 30.0)
    photons_mean: float = 198.0
    photons_shape: float = 6.0  # gamma shape: right-skewed per-tuple photon count
    tuple_period_s: float = 1e-3
    drift_nm: float = 0.3  # per-tuple random-walk step of the centre error
    drift_tau_tuples: float = 200.0  # mean reversion of the centre feedback loop


def _budget_amplitude(photons: np.ndarray, unit_total: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Amplitude that makes the expected total of a tuple equal ``photons``."""
    return np.clip(photons - 6.0 * background, 1.0, None) / unit_total


def _draw_counts(rng: np.random.Generator, mu: np.ndarray) -> np.ndarray:
    return np.minimum(rng.poisson(mu), np.iinfo(np.uint16).max).astype(np.uint16)


def simulate_static(
    n_rulers: int,
    tuples_per_ruler: int,
    seed: int = 0,
    instrument: InstrumentParams | None = None,
    params: StaticParams | None = None,
) -> Recording:
    """Static rulers: every tuple of a ruler shares d, orientation, v0, background, brightness."""
    inst, par = instrument or InstrumentParams(), params or StaticParams()
    rng = np.random.default_rng(seed)
    r = n_rulers
    d = rng.uniform(*par.d_range_nm, r)
    theta = rng.uniform(0.0, np.pi, r)
    v0 = np.clip(inst.v0 + rng.uniform(-inst.v0_jitter, inst.v0_jitter, r), 0.0, 1.0)
    bg = rng.uniform(*inst.background_range, r)
    g2 = rng.uniform(*inst.brightness_ratio_range, r)
    budget = rng.uniform(*par.photons_range, r)

    rep = lambda v: np.repeat(v, tuples_per_ruler, axis=0)  # noqa: E731
    n = r * tuples_per_ruler
    trace = rep(np.arange(r, dtype=np.int64))
    d_t, th_t, v0_t, bg_t, g2_t = rep(d), rep(theta), rep(v0), rep(bg), rep(g2)
    photons = rep(budget) * rng.gamma(1.0 / par.photon_cv**2, par.photon_cv**2, n)
    centre = rng.uniform(-500.0, 500.0, (n, 2))  # absolute stage coordinates are arbitrary
    mid = centre + rng.normal(0.0, inst.centre_error_nm, (n, 2))
    return _finish(rng, inst, centre, mid, d_t, th_t, v0_t, bg_t, g2_t, np.full(n, STATE_TWO),
                   photons, None, trace, np.arange(n) * 1e-3,
                   {"regime": "static", "seed": seed, "n_rulers": r, "tuples_per_ruler": tuples_per_ruler,
                    "instrument": asdict(inst), "params": asdict(par)})


def _state_sequence(rng: np.random.Generator, n_traces: int, length: int) -> np.ndarray:
    """(n_traces, length) states 2 -> 1 -> 0 with random switch points (photobleaching)."""
    t1 = (rng.uniform(0.4, 0.8, n_traces) * length).astype(int)
    t2 = t1 + (rng.uniform(0.3, 0.7, n_traces) * (length - t1)).astype(int)
    idx = np.arange(length)
    return np.where(idx < t1[:, None], STATE_TWO, np.where(idx < t2[:, None], STATE_ONE, STATE_BACKGROUND))


def _centre_drift(rng: np.random.Generator, n_traces: int, length: int, par: DynamicParams, sd: float):
    """(n_traces, length, 2) mean-reverting random walk (AR(1)) of the centre error."""
    rho = np.exp(-1.0 / par.drift_tau_tuples)
    steps = rng.normal(0.0, par.drift_nm, (n_traces, length, 2))
    steps[:, 0] = rng.normal(0.0, sd, (n_traces, 2))
    # AR(1) as a discounted cumulative sum: x_t = sum_s rho^(t-s) e_s, done in float64 blocks
    out = np.empty_like(steps)
    block = 256  # keeps rho^-t finite
    carry = steps[:, 0]
    for start in range(0, length, block):
        seg = steps[:, start:start + block].copy()
        if start:
            seg[:, 0] += rho * carry
        t = np.arange(seg.shape[1])[None, :, None]
        out[:, start:start + block] = np.cumsum(seg * rho ** (-t), axis=1) * rho**t
        carry = out[:, start + seg.shape[1] - 1]
    return out


def simulate_dynamic(
    n_traces: int,
    tuples_per_trace: int = 10_000,
    seed: int = 0,
    instrument: InstrumentParams | None = None,
    params: DynamicParams | None = None,
) -> Recording:
    """Dynamic traces: fixed exposure, state changes 2-on -> 1-on -> background, centre drift."""
    inst, par = instrument or InstrumentParams(), params or DynamicParams()
    rng = np.random.default_rng(seed)
    r, m = n_traces, tuples_per_trace
    d = rng.choice(np.asarray(par.distances_nm, float), r)
    theta = rng.uniform(0.0, np.pi, r)
    v0 = np.clip(inst.v0 + rng.uniform(-inst.v0_jitter, inst.v0_jitter, r), 0.0, 1.0)
    bg = rng.uniform(*inst.background_range, r)
    g2 = rng.uniform(*inst.brightness_ratio_range, r)

    rep = lambda v: np.repeat(v, m, axis=0)  # noqa: E731
    n = r * m
    state = _state_sequence(rng, r, m).ravel()
    drift = _centre_drift(rng, r, m, par, inst.centre_error_nm).reshape(n, 2)
    centre = rep(rng.uniform(-500.0, 500.0, (r, 2)))
    d_t, th_t, v0_t, bg_t, g2_t = rep(d), rep(theta), rep(v0), rep(bg), rep(g2)
    # the feedback loop centres on the pair, or on the survivor once one emitter bleached
    sep = np.stack([d_t * np.cos(th_t), d_t * np.sin(th_t)], axis=1)
    survivor_shift = np.where((state == STATE_ONE)[:, None], -sep / 2, 0.0)
    mid = centre + drift - survivor_shift
    # fixed exposure: brightness set so that the centred 2-on state averages photons_mean
    photons = par.photons_mean * rng.gamma(par.photons_shape, 1.0 / par.photons_shape, n)
    trace = rep(np.arange(r, dtype=np.int64))
    time_s = np.tile(np.arange(m) * par.tuple_period_s, r)
    return _finish(rng, inst, centre, mid, d_t, th_t, v0_t, bg_t, g2_t, state, photons,
                   centre, trace, time_s,
                   {"regime": "dynamic", "seed": seed, "n_traces": r, "tuples_per_trace": m,
                    "instrument": asdict(inst), "params": asdict(par)})


CHUNK = 1 << 15  # tuples per pass: the (chunk, 2, 3) temporaries stay in cache (~2x faster)


def _finish(rng, inst, centre, mid, d, theta, v0, bg, g2, state, photons, brightness_ref, trace, time_s, meta):
    """Place emitters, set brightness, draw Poisson counts and package ground truth."""
    n = len(d)
    sep = np.stack([d * np.cos(theta), d * np.sin(theta)], axis=1)
    a = physics.a_from_v0(v0)
    g1 = np.where(state >= STATE_ONE, 1.0, 0.0)
    g2_on = np.where(state == STATE_TWO, g2, 0.0)
    counts = np.empty((n, 2, 3), np.uint16)
    positions = np.empty((n, 2, 3), np.float32)
    amplitude = np.empty(n)
    photons_expected = np.empty(n)
    for start in range(0, n, CHUNK):
        sl = slice(start, start + CHUNK)
        pos = physics.beam_positions(centre[sl], inst.half_l_nm)
        unit = physics.expected_counts(pos, mid[sl] - sep[sl] / 2, mid[sl] + sep[sl] / 2, 1.0,
                                       g1[sl], g2_on[sl], a[sl], 0.0)
        if brightness_ref is None:
            amp = _budget_amplitude(photons[sl], unit.sum(axis=(1, 2)), bg[sl])
        else:
            # fixed exposure: brightness from the centred 2-on geometry, kept through state changes
            ref = brightness_ref[sl]
            ref_unit = physics.expected_counts(pos, ref - sep[sl] / 2, ref + sep[sl] / 2, 1.0, 1.0, g2[sl],
                                               a[sl], 0.0)
            amp = _budget_amplitude(photons[sl], ref_unit.sum(axis=(1, 2)), bg[sl])
        mu = amp[:, None, None] * unit + bg[sl, None, None]
        counts[sl] = _draw_counts(rng, mu)
        positions[sl] = pos
        amplitude[sl] = amp
        photons_expected[sl] = mu.sum(axis=(1, 2))
    truth = {
        "d_nm": d, "theta": theta, "state": state.astype(np.int8), "v0": v0, "background": bg,
        "g2": g2, "amplitude": amplitude, "mid_nm": mid - centre, "photons_expected": photons_expected,
    }
    return Recording(TupleBatch.build(counts, positions, trace, time_s), truth, meta)


def simulate(regime: str, n_traces: int, tuples_per_trace: int, seed: int = 0, **kw) -> Recording:
    """Dispatch on regime name ("static" or "dynamic")."""
    if regime == "static":
        return simulate_static(n_traces, tuples_per_trace, seed, **kw)
    if regime == "dynamic":
        return simulate_dynamic(n_traces, tuples_per_trace, seed, **kw)
    raise ValueError(f"unknown regime {regime!r}; expected 'static' or 'dynamic'")
