"""Frames -> localizations: detection, ROI fit, duplicate suppression, quality flags (shared by predictors).

Coordinates out are nm from the frame's top-left corner (pixel j spans [j, j+1) * pixel_nm).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from . import mle
from .detect import ROI, Candidates, detect, extract_rois, to_photons
from .psf import DEFAULT_PSF, AstigmaticPSF

#: flag bits (uint8 ``flags`` column): mask -> name; REJECTED set = not a localization to keep
REJECTED, EDGE, Z_OUT, NOT_CONVERGED, DUPLICATE, PAIR = (1 << k for k in range(6))
FLAGS = {REJECTED: "rejected", EDGE: "edge", Z_OUT: "z out of range", NOT_CONVERGED: "not converged",
         DUPLICATE: "duplicate", PAIR: "pair fit"}
#: set by the worker (issue 14) where the stream's instrument lies outside what the model covers;
#: such rows keep their estimates but lose their intervals
MISMATCH = 1 << 6
FLAGS[MISMATCH] = "instrument-mismatch"
WARM_ITER = 8      # LM iterations of a refit started from the previous pass's estimate
PAIR_ITER = 30     # max LM iterations of the two-emitter fit (converged ROIs leave early)
PAIR_CHI2 = 1.15   # Pearson chi2/pixel of the single fit above which a two-emitter fit is tried
PAIR_LR = 25.0     # accept the pair when 2 log-likelihood ratio exceeds this (singles: 99 % < 14)
Z_LIMIT = 800.0


@dataclass
class Localizations:
    item: np.ndarray       # (m,) int32
    xyz: np.ndarray        # (m, 3) nm
    photons: np.ndarray
    background: np.ndarray
    sd: np.ndarray         # (m, 3) CRLB at the estimate, nm
    snr: np.ndarray        # DoG significance of the detection
    flags: np.ndarray      # uint8
    fit: mle.Fit           # ROI-level fit (ROI pixel units)
    rois: np.ndarray
    r0: np.ndarray
    c0: np.ndarray
    frame_bg: np.ndarray   # (n,) per-frame background estimate
    #: pair fits: log-likelihood gap to the pair's best rival configuration (:func:`.mle.pair_alternatives`;
    #: negative: a rival the data prefer but that cannot be reported); inf for single fits
    pair_margin: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.item)


def neighbours(item: np.ndarray, xy: np.ndarray, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Distances (m, k-1) and indices of the nearest other detections of the same frame (inf if none)."""
    m = len(item)
    if m == 0:
        return np.zeros((0, k - 1)), np.zeros((0, k - 1), int)
    pts = np.column_stack([xy[:, 0] + item * 1e7, xy[:, 1]])  # frames far apart: one tree for all
    dist, idx = cKDTree(pts).query(pts, k=min(k, m))
    dist, idx = np.atleast_2d(dist)[:, 1:], np.atleast_2d(idx)[:, 1:]
    if dist.shape[1] < k - 1:
        pad = k - 1 - dist.shape[1]
        dist = np.pad(dist, ((0, 0), (0, pad)), constant_values=np.inf)
        idx = np.pad(idx, ((0, 0), (0, pad)), constant_values=m)
    dist[dist > 1e6] = np.inf
    return dist, idx


def _fit(photons, cand: Candidates, pixel_nm, n_iter, psf):
    rois, r0, c0 = extract_rois(photons, cand)
    return mle.fit(rois, psf, pixel_nm, n_iter=n_iter), rois, r0, c0


def _flags(f: mle.Fit, cand: Candidates, r0, c0, xyz, shape, pixel_nm) -> np.ndarray:
    th = f.theta
    flags = np.zeros(len(th), np.uint8)
    H, W = shape
    near_edge = ((xyz[:, 0] < 2 * pixel_nm) | (xyz[:, 0] > (W - 2) * pixel_nm)
                 | (xyz[:, 1] < 2 * pixel_nm) | (xyz[:, 1] > (H - 2) * pixel_nm))
    flags[near_edge] |= EDGE
    flags[np.abs(th[:, 2]) > Z_LIMIT] |= Z_OUT | REJECTED
    flags[~f.converged] |= NOT_CONVERGED
    # a fit that walked far from its candidate pixel belongs to another candidate's emitter
    moved = np.hypot(th[:, 0] - (cand.col - c0 + 0.5), th[:, 1] - (cand.row - r0 + 0.5)) > 2.5
    flags[moved | (th[:, 3] < 50)] |= REJECTED
    # two candidates on one elongated PSF converge to the same emitter: keep the brighter fit
    dist, idx = neighbours(cand.item, xyz[:, :2] / pixel_nm)
    dup = (dist[:, 0] < 1.0) & (th[:, 3] < np.append(th[:, 3], np.inf)[idx[:, 0]])
    flags[dup] |= DUPLICATE | REJECTED
    return flags


def _model_image(item, xyz, photons, n, H, W, pixel_nm, psf) -> np.ndarray:
    """Photons of the given emitters rendered on the frames (no background)."""
    from .simulate import render

    t = {"item": item, "x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2], "photons": photons}
    return render(t, n, H, W, pixel_nm, 0.0, psf)


def localize(frames: np.ndarray, pixel_nm: float = 100.0, baseline: float = 100.0,
             adu_per_photon: float = 1.0, n_iter: int = 20, psf: AstigmaticPSF = DEFAULT_PSF,
             threshold: float = 5.0, passes: int = 1) -> Localizations:
    """Detect and fit. ``passes=2`` adds a second pass: the fitted emitters are rendered, candidates
    are searched again in the residual frames (emitters hidden next to brighter ones), and every
    candidate is refitted with the models of all *other* fits subtracted from its ROI."""
    photons = to_photons(np.asarray(frames), baseline, adu_per_photon)
    n, H, W = photons.shape
    cand = detect(photons, threshold)
    f, rois, r0, c0 = _fit(photons, cand, pixel_nm, n_iter, psf)
    for _ in range(passes - 1):
        th = f.theta
        xyz = np.column_stack([(c0 + th[:, 0]) * pixel_nm, (r0 + th[:, 1]) * pixel_nm, th[:, 2]])
        good = (_flags(f, cand, r0, c0, xyz, (H, W), pixel_nm) & REJECTED) == 0
        model_all = _model_image(cand.item[good], xyz[good], th[good, 3], n, H, W, pixel_nm, psf)
        # new candidates in the residual, away from kept fits
        res = detect(photons - model_all.astype(np.float32), threshold, bg=cand.bg)
        if len(res.item):
            px = np.column_stack([xyz[good, 0] / pixel_nm, xyz[good, 1] / pixel_nm])
            pts = np.column_stack([px[:, 0] + cand.item[good] * 1e7, px[:, 1]])
            new = np.column_stack([res.col + 0.5 + res.item * 1e7, res.row + 0.5])
            far = (cKDTree(pts).query(new)[0] > 2.0) if len(pts) else np.ones(len(new), bool)
        else:
            far = np.zeros(0, bool)
        # kept fits re-centred on their estimates, plus the new candidates
        row = np.concatenate([np.floor(xyz[good, 1] / pixel_nm).astype(np.int32), res.row[far]])
        col = np.concatenate([np.floor(xyz[good, 0] / pixel_nm).astype(np.int32), res.col[far]])
        row, col = np.clip(row, 0, H - 1), np.clip(col, 0, W - 1)
        item = np.concatenate([cand.item[good], res.item[far]])
        snr = np.concatenate([cand.snr[good], res.snr[far]])
        cand2 = Candidates(item, row, col, snr, cand.bg)
        rois2, r02, c02 = extract_rois(photons, cand2)
        others = extract_rois(model_all, cand2)[0] - _shift_own(r0[good], c0[good], r02, c02,
                                                                 th[good], psf, pixel_nm, len(item))
        # kept fits restart from their estimates (moved into the new ROI): a few iterations suffice
        k = int(good.sum())
        warm = th[good].copy()
        warm[:, 0] += c0[good] - c02[:k]
        warm[:, 1] += r0[good] - r02[:k]
        fa = mle.fit(rois2[:k] - others[:k], psf, pixel_nm, n_iter=WARM_ITER, theta0=warm)
        fb = mle.fit(rois2[k:] - others[k:], psf, pixel_nm, n_iter=n_iter)
        f = mle.Fit(*(np.concatenate([getattr(fa, a), getattr(fb, a)])
                      for a in ("theta", "sd", "loglik", "converged", "mu")))
        cand, rois, r0, c0 = cand2, rois2 - others, r02, c02
    th = f.theta
    xyz = np.column_stack([(c0 + th[:, 0]) * pixel_nm, (r0 + th[:, 1]) * pixel_nm, th[:, 2]])
    flags = _flags(f, cand, r0, c0, xyz, (H, W), pixel_nm)
    margin = np.full(len(th), np.inf)
    if passes >= 2:
        f, cand, rois, r0, c0, flags, margin = _split_pairs(f, cand, rois, r0, c0, flags, psf, pixel_nm, n_iter)
        th = f.theta
        xyz = np.column_stack([(c0 + th[:, 0]) * pixel_nm, (r0 + th[:, 1]) * pixel_nm, th[:, 2]])
    sd = np.column_stack([f.sd[:, 0] * pixel_nm, f.sd[:, 1] * pixel_nm, f.sd[:, 2]])
    return Localizations(cand.item, xyz, th[:, 3].copy(), th[:, 4].copy(), sd, cand.snr, flags, f,
                         rois, r0, c0, cand.bg, margin)


def pair_gain(L: Localizations, rows: np.ndarray, psf: AstigmaticPSF = DEFAULT_PSF,
              pixel_nm: float = 100.0) -> tuple[np.ndarray, np.ndarray]:
    """For the localizations ``rows`` (indices) of ``L``: the 2 log-likelihood ratio of a two-emitter
    fit over the single fit, on the ROIs their fits saw (neighbours subtracted), and the two fitted
    emitters' separation in pixels. Evidence that a single fit is two emitters merged into one:
    isolated emitters stay below 16 in 99.0-99.8 % of cases."""
    if len(rows) == 0:
        return np.zeros(0), np.zeros(0)
    th2, _, ll2, _ = mle.fit_pairs(L.rois[rows], L.fit.theta[rows], psf, pixel_nm, PAIR_ITER)
    return 2.0 * (ll2 - L.fit.loglik[rows]), np.hypot(th2[:, 0] - th2[:, 4], th2[:, 1] - th2[:, 5])


def _shift_own(r0_old, c0_old, r0_new, c0_new, th_old, psf, pixel_nm, m_total) -> np.ndarray:
    """Each kept fit's own model on its *new* ROI (the ROI may have moved when re-centred)."""
    from .psf import model

    k = len(th_old)
    out = np.zeros((m_total, ROI, ROI))
    if k == 0:
        return out
    t = th_old.copy()
    t[:, 0] += c0_old - c0_new[:k]
    t[:, 1] += r0_old - r0_new[:k]
    t[:, 4] = 0.0
    out[:k] = model(t, ROI, psf, pixel_nm)
    return out


def _split_pairs(f: mle.Fit, cand: Candidates, rois, r0, c0, flags, psf, pixel_nm, n_iter):
    """Refit badly explained ROIs with two emitters; where the likelihood ratio says two, the
    candidate becomes two localizations (flag ``pair fit``), both with the pair model's CRLB."""
    M, R = len(f.theta), ROI
    chi2 = ((rois - f.mu) ** 2 / (f.mu + 2.25)).reshape(M, R * R).mean(1) if M else np.zeros(0)
    # also single fits rejected only for |z| out of range: two emitters 2-5 px apart make one wide,
    # defocused-looking blob, and the single fit answers with an impossible z (measured: most of the
    # missed emitters of close pairs on filaments); duplicates stay out (their partner is fitted)
    z_only = ((flags & Z_OUT) != 0) & ((flags & DUPLICATE) == 0)
    idx = np.nonzero((((flags & REJECTED) == 0) | z_only) & (chi2 > PAIR_CHI2))[0]
    no_margin = np.full(M, np.inf)
    if len(idx) == 0:
        return f, cand, rois, r0, c0, flags, no_margin
    th2, sd2, ll2, mu2 = mle.fit_pairs(rois[idx], f.theta[idx], psf, pixel_nm, PAIR_ITER)

    def admissible(t):  # both emitters inside the ROI, bright enough, z within range
        return (np.all((t[:, [0, 1, 4, 5]] > 0) & (t[:, [0, 1, 4, 5]] < R), axis=1) & (t[:, 3] > 100)
                & (t[:, 7] > 100) & (np.abs(t[:, 2]) < Z_LIMIT) & (np.abs(t[:, 6]) < Z_LIMIT))

    ok = (2 * (ll2 - f.loglik[idx]) > PAIR_LR) & admissible(th2)
    idx, th2, sd2, ll2, mu2 = idx[ok], th2[ok], sd2[ok], ll2[ok], mu2[ok]
    if len(idx) == 0:
        return f, cand, rois, r0, c0, flags, no_margin
    # look for each pair's rival configuration: a better one replaces the fit, and the gap between
    # the two (pair_margin) says whether the data can tell them apart (apply() drops those it cannot)
    ta, la, ma, Ja = mle.pair_alternatives(rois[idx], th2, ll2, psf, pixel_nm, PAIR_ITER)
    found = np.isfinite(la)
    better = found & admissible(ta) & (la > ll2)
    # margin: the gap to the rival; negative where the data prefer a rival we cannot report (an
    # emitter out of the z range or the ROI, too dim): this pair fit then has no standing
    margin = np.where(found, np.where(better, la - ll2, ll2 - la), np.inf)
    th2[better], mu2[better] = ta[better], ma[better]
    sd2[better] = mle.pair_sd(ma[better], Ja[better])
    ll2 = np.where(better, la, ll2)
    b = th2[:, 8:9]
    theta = f.theta.copy()
    theta[idx] = np.hstack([th2[:, 0:4], b])
    new_theta = np.hstack([th2[:, 4:8], b])
    sd = f.sd.copy()
    sd[idx] = sd2[:, 0]
    mu = f.mu.copy()
    mu[idx] = mu2
    ll = f.loglik.copy()
    ll[idx] = ll2
    flags = flags.copy()
    flags[idx] &= ~np.uint8(REJECTED | Z_OUT)   # the pair model explains the blob within range
    flags[idx] |= PAIR
    fit = mle.Fit(np.vstack([theta, new_theta]), np.vstack([sd, sd2[:, 1]]), np.append(ll, ll2),
                  np.append(f.converged, f.converged[idx]), np.concatenate([mu, mu2]))
    nr = r0[idx] + np.floor(new_theta[:, 1]).astype(np.int32)
    nc = c0[idx] + np.floor(new_theta[:, 0]).astype(np.int32)
    cand = Candidates(np.append(cand.item, cand.item[idx]), np.append(cand.row, nr), np.append(cand.col, nc),
                      np.append(cand.snr, cand.snr[idx]), cand.bg)
    no_margin[idx] = margin
    return (fit, cand, np.concatenate([rois, rois[idx]]), np.append(r0, r0[idx]), np.append(c0, c0[idx]),
            np.append(flags, flags[idx]), np.append(no_margin, margin))
