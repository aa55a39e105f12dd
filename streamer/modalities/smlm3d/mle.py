"""Batched Poisson maximum-likelihood fit of the astigmatic PSF on all ROIs at once (numpy).

Levenberg-Marquardt on the Poisson log-likelihood with Fisher-scoring curvature (Smith et al. 2010
style, but every ROI of a packet is one row of (M, 5) arrays): one model+Jacobian evaluation, one
batched 5x5 solve and one trial evaluation per iteration; a step is accepted per ROI only if the
likelihood rises (damping shrinks), otherwise the damping grows. Start: x, y from a background-
subtracted centroid, b from the ROI border median, z from a coarse likelihood grid over the
calibration curve (the ellipticity has no other ambiguity within +-750 nm).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .detect import READ_VAR
from .psf import DEFAULT_PSF, AstigmaticPSF, fisher, model

Z_GRID = np.linspace(-750.0, 750.0, 11)
Z_BOUND = 1000.0


@dataclass
class Fit:
    theta: np.ndarray     # (M, 5): x, y (ROI pixel units), z (nm), N, b
    sd: np.ndarray        # (M, 5): CRLB at the estimate (x, y in pixels here)
    loglik: np.ndarray    # (M,)
    converged: np.ndarray  # (M,) bool
    mu: np.ndarray        # (M, R, R) model at the estimate


def _loglik(d: np.ndarray, mu: np.ndarray) -> np.ndarray:
    mu = mu + READ_VAR
    return (d * np.log(mu) - mu).reshape(len(mu), mu[0].size if len(mu) else 0).sum(1)


def initial(rois: np.ndarray, psf: AstigmaticPSF, pixel_nm: float) -> np.ndarray:
    """Starting parameters (M, 5) for every ROI."""
    M, R, _ = rois.shape
    border = np.concatenate([rois[:, 0], rois[:, -1], rois[:, 1:-1, 0], rois[:, 1:-1, -1]], axis=1)
    b = np.maximum(np.median(border, axis=1), 0.5)
    s = np.clip(rois - b[:, None, None], 0, None)
    # centroid of the central 7x7 (neighbours further out should not pull the start)
    c = R // 2
    w = s[:, c - 3:c + 4, c - 3:c + 4]
    tot = w.sum((1, 2)) + 1e-9
    ar = np.arange(c - 3, c + 4) + 0.5
    x = (w.sum(1) * ar).sum(1) / tot
    y = (w.sum(2) * ar).sum(1) / tot
    N = np.maximum(s.sum((1, 2)), 20.0)
    theta = np.column_stack([x, y, np.zeros(M), N, b])
    # coarse z: best likelihood on the grid
    d = rois + READ_VAR
    best, bestz = np.full(M, -np.inf), np.zeros(M)
    for z in Z_GRID:
        theta[:, 2] = z
        ll = _loglik(d, model(theta, R, psf, pixel_nm))
        better = ll > best
        best[better], bestz[better] = ll[better], z
    theta[:, 2] = bestz
    return theta


def _lm_step(active, theta, mu, J, ll, lam, d, lo, hi, evaluate):
    """One Levenberg-Marquardt step of the Poisson likelihood (Fisher scoring, damped) for the fits
    ``active``: taken where the likelihood does not drop (``theta``, ``mu``, ``J``, ``ll`` updated in
    place, damping lowered), else the damping is raised. ``evaluate(theta) -> (mu, J)`` is the model
    (one emitter or a pair). Returns (step, accepted)."""
    mu_a, J_a, d_a = mu[active], J[active], d[active]
    P = J.shape[-1]
    F = fisher(mu_a, J_a, READ_VAR)
    w = 1.0 / (mu_a + READ_VAR)
    grad = np.einsum("mkp,mk->mp", J_a.reshape(len(active), -1, P), (d_a * w - 1.0).reshape(len(active), -1))
    diag = np.diagonal(F, axis1=1, axis2=2)
    A = F + (lam[active, None] * diag)[:, :, None] * np.eye(P) + np.eye(P) * 1e-9
    step = np.linalg.solve(A, grad[:, :, None])[:, :, 0]
    trial = np.clip(theta[active] + step, lo, hi)
    mu_t, J_t = evaluate(trial)
    ll_t = _loglik(d_a, mu_t)
    ok = ll_t >= ll[active]
    acc = active[ok]
    theta[acc], mu[acc], J[acc], ll[acc] = trial[ok], mu_t[ok], J_t[ok], ll_t[ok]
    lam[acc] = np.maximum(lam[acc] * 0.3, 1e-6)
    lam[active[~ok]] *= 10.0
    return step, ok


def fit(rois: np.ndarray, psf: AstigmaticPSF = DEFAULT_PSF, pixel_nm: float = 100.0,
        n_iter: int = 20, theta0: np.ndarray | None = None, tol: float = 1e-3) -> Fit:
    """Fit every ROI (M, R, R) (photons) with one emitter + flat background."""
    M, R, _ = rois.shape
    if M == 0:
        z = np.zeros((0, 5))
        return Fit(z, z.copy(), np.zeros(0), np.zeros(0, bool), np.zeros((0, R, R)))
    theta = initial(rois, psf, pixel_nm) if theta0 is None else theta0.copy()
    d = np.maximum(rois, -READ_VAR + 1e-3) + READ_VAR  # sCMOS approximation: d + var ~ Poisson(mu + var)
    lam = np.full(M, 1e-2)
    lo = np.array([-1.0, -1.0, -Z_BOUND, 1.0, 1e-2])
    hi = np.array([R + 1.0, R + 1.0, Z_BOUND, 1e9, 1e6])
    converged = np.zeros(M, bool)
    active = np.arange(M)
    mu, J = model(theta, R, psf, pixel_nm, jac=True)
    ll = _loglik(d, mu)
    for _ in range(n_iter):
        if len(active) == 0:
            break
        step, ok = _lm_step(active, theta, mu, J, ll, lam, d, lo, hi,
                            lambda t: model(t, R, psf, pixel_nm, jac=True))
        # converged: accepted step smaller than tol (pixels / 1 nm z / relative N)
        small = ok & (np.abs(step[:, 0]) < tol) & (np.abs(step[:, 1]) < tol) & (np.abs(step[:, 2]) < 10 * tol * 100)
        converged[active[small]] = True
        active = active[~small & (lam[active] < 1e6)]
    F = fisher(mu, J, READ_VAR)
    cov = np.linalg.inv(F + np.eye(5) * 1e-9)
    sd = np.sqrt(np.maximum(np.diagonal(cov, axis1=1, axis2=2), 0.0))
    return Fit(theta, sd, ll, converged, mu)


# --------------------------------------------------------------------------- two-emitter fits
PAIR_SPLITS = np.array([[1.0, 0.0], [0.0, 1.0], [0.7071, 0.7071], [0.7071, -0.7071]])


def _pair_model(theta: np.ndarray, R: int, psf: AstigmaticPSF, pixel_nm: float, jac: bool = False):
    """Two emitters + one background: theta (M, 9) = x1, y1, z1, N1, x2, y2, z2, N2, b."""
    M = len(theta)
    zero = np.zeros((M, 1))
    t1 = np.hstack([theta[:, 0:4], zero])
    t2 = np.hstack([theta[:, 4:8], zero])
    if not jac:
        return model(t1, R, psf, pixel_nm) + model(t2, R, psf, pixel_nm) + theta[:, 8, None, None]
    m1, J1 = model(t1, R, psf, pixel_nm, jac=True)
    m2, J2 = model(t2, R, psf, pixel_nm, jac=True)
    J = np.concatenate([J1[..., :4], J2[..., :4], np.ones(m1.shape + (1,))], axis=-1)
    return m1 + m2 + theta[:, 8, None, None], J


def _pair_lm(d: np.ndarray, theta: np.ndarray, psf: AstigmaticPSF, pixel_nm: float, n_iter: int):
    """Levenberg-Marquardt of the two-emitter model from ``theta`` (M, 9) on data ``d`` (+ read var)."""
    M, R = len(d), d.shape[1]
    theta = theta.copy()
    lo = np.array([-1.0, -1.0, -Z_BOUND, 1.0] * 2 + [1e-2])
    hi = np.array([R + 1.0, R + 1.0, Z_BOUND, 1e9] * 2 + [1e6])
    lam = np.full(M, 1e-2)
    mu, J = _pair_model(theta, R, psf, pixel_nm, jac=True)
    ll = _loglik(d, mu)
    active = np.arange(M)
    for _ in range(n_iter):
        if len(active) == 0:
            break
        step, ok = _lm_step(active, theta, mu, J, ll, lam, d, lo, hi,
                            lambda t: _pair_model(t, R, psf, pixel_nm, jac=True))
        # done: accepted step below 1e-3 px laterally and 1 nm axially for both emitters
        small = ok & np.all(np.abs(step[:, [0, 1, 4, 5]]) < 1e-3, 1) & np.all(np.abs(step[:, [2, 6]]) < 1.0, 1)
        active = active[~small & (lam[active] < 1e8)]
    return theta, ll, mu, J


def fit_pairs(rois: np.ndarray, single: np.ndarray, psf: AstigmaticPSF = DEFAULT_PSF,
              pixel_nm: float = 100.0, n_iter: int = 20, split_px: float = 1.0):
    """Two-emitter Poisson MLE started from single-emitter fits ``single`` (M, 5).

    Starts: the single emitter split +-``split_px`` along 4 directions at its z, half the photons
    each (best likelihood kept). Single fits with |z| > 800 nm also try 2 ``split_px`` splits at the
    clipped z and at +-350 nm, and run from the best start of each sign of z (better optimum kept).
    Returns theta (M, 9), per-emitter CRLB sd (M, 2, 5) (x, y in pixels,
    z nm, N, b), log-likelihood (M,), the model (M, R, R).
    """
    M, R, _ = rois.shape
    d = np.maximum(rois, -READ_VAR + 1e-3) + READ_VAR
    if M == 0:
        return np.zeros((0, 9)), np.zeros((0, 2, 5)), np.zeros(0), np.zeros((0, R, R))
    def best_start(rows, splits, z_values):
        """Best-likelihood start per row and per sign of z: (2, k) log-likelihoods, (2, k, 9)."""
        k = len(rows)
        bl, bt = np.full((2, k), -np.inf), np.zeros((2, k, 9))
        for u in splits:
            for z0 in z_values:
                t = np.empty((k, 9))
                t[:, 0:2] = single[rows, 0:2] - split_px * u
                t[:, 4:6] = single[rows, 0:2] + split_px * u
                t[:, 2] = t[:, 6] = z0[rows]
                t[:, 3] = t[:, 7] = 0.5 * single[rows, 3]
                t[:, 8] = single[rows, 4]
                ll = _loglik(d[rows], _pair_model(t, R, psf, pixel_nm))
                sgn = (z0[rows] >= 0).astype(int)
                for s_ in (0, 1):
                    better = (sgn == s_) & (ll > bl[s_])
                    bl[s_, better], bt[s_, better] = ll[better], t[better]
        return bl, bt

    ar = np.arange(M)
    bl, bt = best_start(ar, PAIR_SPLITS, (single[:, 2],))
    first = np.argmax(bl, axis=0)
    start = bt[first, ar]
    # a single fit rejected for |z| > 800 nm is usually a wide pair: it sits between the two, and its
    # z is no guide (the astigmatic elongation mimicked the separation), so such rows also try 2-px
    # splits at +-350 nm, and run the best start of *each* sign of z (elongation along x or along y)
    alt = np.nonzero(np.abs(single[:, 2]) > 800.0)[0]
    if len(alt):
        zc = np.clip(single[:, 2], -600.0, 600.0)
        bl2, bt2 = best_start(alt, np.concatenate([PAIR_SPLITS, 2.0 * PAIR_SPLITS]),
                              (zc, np.full(M, -350.0), np.full(M, 350.0)))
        f2 = np.argmax(bl2, axis=0)
        start[alt] = bt2[f2, np.arange(len(alt))]
    theta, ll, mu, J = _pair_lm(d, start, psf, pixel_nm, n_iter)
    if len(alt):
        th_b, ll_b, mu_b, J_b = _pair_lm(d[alt], bt2[1 - f2, np.arange(len(alt))], psf, pixel_nm, n_iter)
        w = ll_b > ll[alt]
        theta[alt[w]], ll[alt[w]], mu[alt[w]], J[alt[w]] = th_b[w], ll_b[w], mu_b[w], J_b[w]
    return theta, pair_sd(mu, J), ll, mu


def pair_sd(mu: np.ndarray, J: np.ndarray) -> np.ndarray:
    """Per-emitter CRLB sd (M, 2, 5) of two-emitter fits from their model and Jacobian."""
    cov = np.linalg.inv(fisher(mu, J, READ_VAR) + np.eye(9) * 1e-9)
    var = np.maximum(np.diagonal(cov, axis1=1, axis2=2), 0.0)
    return np.sqrt(np.stack([np.append(var[:, 0:4], var[:, 8:9], 1), np.append(var[:, 4:8], var[:, 8:9], 1)], 1))


#: restarts of :func:`pair_alternatives`: (z of both negated, z exchanged, pair axis turned 90 degrees).
#: The three that reach the rival in most cases (measured on structure frames at all three SNRs:
#: z mirrored 236, mirrored + exchanged 193, turned + mirrored 207 of the rivals within 10 log-likelihood
#: units; exchanged, turned, turned + exchanged 71, 59, 60, mostly the same rivals again)
ALT_STARTS = ((True, False, False), (True, True, False), (True, False, True))
ALT_PROBE_ITER = 4   # LM iterations every restart gets before the hopeless ones are dropped
ALT_REACH = 40.0     # log-likelihood below the fit at which a restart is dropped after those


def pair_alternatives(rois: np.ndarray, theta: np.ndarray, ll: np.ndarray, psf: AstigmaticPSF = DEFAULT_PSF,
                      pixel_nm: float = 100.0, n_iter: int = 20):
    """The best *other* optimum of each two-emitter fit ``theta`` (M, 9).

    Astigmatism encodes z in the PSF's elongation, so two overlapping emitters have look-alike
    configurations: both z mirrored, their z exchanged, or the pair axis turned by 90 degrees with
    the elongations following (measured on filaments: fits 60-125 nm off at 20k photons, with a
    rival optimum within a few log-likelihood units). LM restarts from :data:`ALT_STARTS`;
    an optimum counts as other when, under either labelling of the two emitters, one of them moved
    more than 0.3 px laterally or 100 nm axially. Returns (theta, log-likelihood, model, Jacobian)
    of the best other optimum per row (``ll``: the fits' own log-likelihoods); -inf where every
    restart came back or fell far below."""
    M, R, _ = rois.shape
    d = np.maximum(rois, -READ_VAR + 1e-3) + READ_VAR
    if M == 0:
        return theta.copy(), np.full(0, -np.inf), np.zeros((0, R, R)), np.zeros((0, R, R, 9))
    mx, my = 0.5 * (theta[:, 0] + theta[:, 4]), 0.5 * (theta[:, 1] + theta[:, 5])
    vx, vy = theta[:, 4] - mx, theta[:, 5] - my
    e1, e2 = theta[:, [0, 1, 2]], theta[:, [4, 5, 6]]

    def apart(t, a, b):  # largest move of either emitter, z scaled 100 nm ~ 0.3 px
        return np.maximum.reduce([np.hypot(t[:, 0] - a[:, 0], t[:, 1] - a[:, 1]),
                                  np.hypot(t[:, 4] - b[:, 0], t[:, 5] - b[:, 1]),
                                  np.abs(t[:, 2] - a[:, 2]) / 333.0, np.abs(t[:, 6] - b[:, 2]) / 333.0])

    # every restart of every row in one stacked LM (the LM is vectorised over rows: one call with
    # K M rows costs far less than K calls of M rows)
    starts = []
    for mirror, swap, turn in ALT_STARTS:
        t = theta.copy()
        z1, z2 = (theta[:, 6], theta[:, 2]) if swap else (theta[:, 2], theta[:, 6])
        t[:, 2], t[:, 6] = (-z1, -z2) if mirror else (z1, z2)
        if turn:
            t[:, 0], t[:, 1], t[:, 4], t[:, 5] = mx + vy, my - vx, mx - vy, my + vx
        starts.append(t)
    K = len(starts)
    # a few iterations for every start, then only the restarts still within reach of the fit (a
    # rival needs to come within AMBIGUOUS_LL of it or beat it) run on: most fall far below at once
    dd = np.tile(d, (K, 1, 1))
    th_a, ll_a, mu_a, J_a = _pair_lm(dd, np.concatenate(starts), psf, pixel_nm, ALT_PROBE_ITER)
    alive = np.nonzero(ll_a > np.tile(ll, K) - ALT_REACH)[0]
    if len(alive):
        th_b, ll_b, mu_b, J_b = _pair_lm(dd[alive], th_a[alive], psf, pixel_nm, max(n_iter - ALT_PROBE_ITER, 1))
        th_a[alive], ll_a[alive], mu_a[alive], J_a[alive] = th_b, ll_b, mu_b, J_b
    th_a, ll_a = th_a.reshape(K, M, 9), ll_a.reshape(K, M)
    other = np.stack([np.minimum(apart(th_a[k], e1, e2), apart(th_a[k], e2, e1)) > 0.3 for k in range(K)])
    ll_o = np.where(other, ll_a, -np.inf)
    k_best = np.argmax(ll_o, axis=0)
    rows = np.arange(M)
    flat = k_best * M + rows
    best_ll = ll_o[k_best, rows]
    best_t = np.where(np.isfinite(best_ll)[:, None], th_a[k_best, rows], theta)
    best_mu, best_J = mu_a[flat], J_a[flat]
    return best_t, best_ll, best_mu, best_J
