"""Learned path: trees that correct the ROI fit and score candidates, with split-conformal intervals.

Regression targets are the fit's residuals in units of its own CRLB (t = (truth - fit) / sd), so one
ensemble serves every SNR: isolated emitters have t ~ N(0, 1) and the trees predict ~0 (the fit is
already efficient there), while overlapping neighbours leave a predictable bias (residual moments,
neighbour offsets) that the trees remove. A classifier scores each candidate (P(matched to a true
emitter)); localizations below the bundle's threshold (per background level x frame crowding) are
flagged ``rejected``.

Shrinkage: per Mondrian group (below) and coordinate, the correction is multiplied by a weight in
{0, 0.25, ..., 1} that minimises the squared error on held-out calibration frames (isolated emitters
at low SNR get little or none of it: there the fit is already at the CRLB and the trees' prediction
is mostly noise).

Intervals: normalized Mondrian split conformal. A third ensemble predicts the log of the fit's typical
|error| / CRLB from the same features (crowded or badly fitted candidates err by many CRLBs), so the
score is |truth - estimate| / (sd * exp(s_hat)) per coordinate; groups: background level x frame
crowding (candidates per frame) x nearest-candidate distance; within a group the half-width is
q_g * sd * exp(s_hat) with q_g the finite-sample-corrected 90 % quantile on calibration frames
that never trained the trees.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .features import FEATURE_NAMES, features
from .localize import DUPLICATE, REJECTED, Localizations

MODEL_DIR = Path(__file__).resolve().parents[3] / "compiled_models" / "smlm3d"
NN_EDGES = (3.0, 6.0, 12.0)      # nearest-candidate distance bins (pixels)
COUNT_EDGES = (3.0, 7.0)         # candidates in the frame: <= 2, 3-6, >= 7
BG_EDGES = (25.0, 100.0)         # background bins (photons/pixel)
COVERAGE = 0.9
PAIR_PRECISION_K = 3.0           # see imprecise_pairs
PAIR_PRECISION_BIN = 1           # frame-crowding bins it applies to: <= 6 candidates per frame (rejected ones included)
AMBIGUOUS_LL = 10.0              # see ambiguous: a pair fit whose rival optimum is within this log-likelihood
MIN_PHOTONS = 50.0               # see ambiguous: fits of fewer photons than this (the fit's own rejection level)
MIN_GROUP = 200                  # calibration scores a Mondrian group needs for its own quantile
N_GROUPS = (len(BG_EDGES) + 1) * (len(COUNT_EDGES) + 1) * (len(NN_EDGES) + 1)
#: conformal groups also split each group by the predicted lateral error scale (quartiles on the
#: calibration set): at 1k/10 d=13 the top quartile was covered 82 % and the bottom 92 % (bright,
#: merged fits), the same direction, weaker, at d=5
SCALE_BINS = 4


def background_bin(X: np.ndarray) -> np.ndarray:
    """Background level (BG_EDGES) of each row of the feature matrix."""
    return np.digitize(np.exp(X[:, FEATURE_NAMES.index("log_bg")]), BG_EDGES)


def crowding_bin(X: np.ndarray) -> np.ndarray:
    """Frame-crowding bin (COUNT_EDGES: candidates in the row's frame) of each row."""
    return np.digitize(X[:, FEATURE_NAMES.index("frame_count")], COUNT_EDGES)


def row_thresholds(thr: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Each row's score threshold from a bundle's table: per background level x crowding bin, per
    crowding bin (earlier bundles) or one value."""
    thr = np.asarray(thr)
    if thr.ndim == 2:
        return thr[background_bin(X), crowding_bin(X)]
    return thr[crowding_bin(X)] if thr.size > 1 else thr


def groups(X: np.ndarray) -> np.ndarray:
    """Mondrian group index per row of the feature matrix (background x frame crowding x neighbour)."""
    nn = np.digitize(X[:, FEATURE_NAMES.index("nn1_dist")], NN_EDGES)
    cnt = crowding_bin(X)
    bg = background_bin(X)
    return ((bg * (len(COUNT_EDGES) + 1) + cnt) * (len(NN_EDGES) + 1) + nn).astype(np.int64)


def conformal_groups(X: np.ndarray, log_scale: np.ndarray, scale_edges) -> np.ndarray:
    """Conformal group per row: :func:`groups` x the bin of the predicted lateral log error scale
    (mean of x and y) among ``scale_edges`` (None: bundles calibrated before the scale axis)."""
    g = groups(X)
    if scale_edges is None:
        return g
    lat = log_scale[:, :2].mean(axis=1)
    return g * (len(scale_edges) + 1) + np.digitize(lat, np.asarray(scale_edges))


def conformal_quantiles(scores: np.ndarray, g: np.ndarray, level: float = COVERAGE,
                        n_groups: int = N_GROUPS) -> np.ndarray:
    """(n_groups, k) finite-sample split-conformal quantiles; sparse groups fall back to the pooled one.
    Group indices carry the background level as their most significant digit (pooling over it)."""
    k = scores.shape[1]
    out = np.empty((n_groups, k))

    def q(s):
        n = len(s)
        r = min(int(np.ceil((n + 1) * level)), n)
        return np.sort(s, axis=0)[r - 1]

    pooled = q(scores)
    per_bg = n_groups // (len(BG_EDGES) + 1)
    for gi in range(n_groups):
        s = scores[g == gi]
        # a 90 % quantile from fewer than ~200 scores moves coverage by > 2 %: pool such a sparse cell
        # over the background levels (the score is CRLB-scaled), and a still sparser one over all
        if len(s) < MIN_GROUP:
            s = scores[g % per_bg == gi % per_bg]
        out[gi] = q(s) if len(s) >= 50 else pooled
    return out


def imprecise_pairs(L: Localizations, count_bin: np.ndarray, pixel_nm: float, psf=None,
                    k: float = PAIR_PRECISION_K, rows: np.ndarray | None = None) -> np.ndarray:
    """Pair-fit localizations of sparse frames whose own CRLB exceeds ``k`` x the isolated-emitter
    CRLB at the same estimate (two emitters ~1 px apart on a filament: resolved, but each known to
    tens of nm, 5-35x the isolated bound, measured). A precision filter for the sparse regime only: in
    crowded frames such pairs are most of the detections and the JI needs them. Sparse frames: at
    most 6 candidates (``count_bin``), or, with ``rows`` given, those rows instead (the frames of a
    sparse acquisition, :func:`sparse_packet_rows`)."""
    from .detect import READ_VAR, ROI
    from .localize import PAIR
    from .psf import DEFAULT_PSF, crlb

    sparse = (count_bin <= PAIR_PRECISION_BIN) if rows is None else rows
    sel = np.nonzero(((L.flags & PAIR) != 0) & sparse)[0]
    out = np.zeros(len(L), bool)
    if len(sel) == 0:
        return out
    th = np.column_stack([L.xyz[sel, 0] / pixel_nm, L.xyz[sel, 1] / pixel_nm, L.xyz[sel, 2],
                          L.photons[sel], L.background[sel]])
    iso = crlb(th, psf or DEFAULT_PSF, pixel_nm=pixel_nm, n_px=ROI, read_var=READ_VAR)
    out[sel] = np.hypot(L.sd[sel, 0], L.sd[sel, 1]) > k * np.hypot(iso[:, 0], iso[:, 1])
    return out


def sparse_packet_rows(item: np.ndarray, kept: np.ndarray, n_frames: int, rule: dict | None,
                       history: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Kept localizations the sparse-acquisition rule applies to (bool mask): those in frames of at
    most ``rule["frame_max"]`` kept localizations, in a packet of at least ``rule["min_frames"]``
    frames whose kept localizations average fewer than ``rule["below_per_frame"]`` per frame.

    Whether an acquisition is sparse no single frame tells (a 3-6-candidate frame is common at 1 and
    at 5 emitters/frame), a packet does. A packet of ``min_frames`` or more is judged alone
    (deterministic per packet: the same packets give the same answer live and reprocessed, whichever
    worker serves them); a shorter one (a camera sending single frames) with ``history``, the
    (frames, kept localizations) its stream showed before it (:class:`StreamDensity`). ``rule``
    None: none."""
    out = np.zeros(len(kept), bool)
    if rule and n_frames >= float(rule["min_frames"]):
        history = (0.0, 0.0)
    frames_seen, kept_seen = float(history[0]) + n_frames, float(history[1]) + float(kept.sum())
    if not rule or frames_seen < float(rule["min_frames"]) or not kept.any():
        return out
    if kept_seen >= float(rule["below_per_frame"]) * frames_seen:
        return out
    cnt = np.bincount(item[kept], minlength=n_frames)
    return kept & (cnt[item] <= int(rule["frame_max"]))


def sparse_packet_cut(item: np.ndarray, score: np.ndarray, kept: np.ndarray, n_frames: int, rule: dict | None,
                      history: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Localizations a sparse acquisition rejects on top of the bundle's thresholds for their score
    (bool mask): the :func:`sparse_packet_rows` scored below ``rule["score"]``.

    At low density (<= 1 emitter/frame) the issue asks for precision (RMSE near the CRLB) with the
    Jaccard index no lower than the MLE baseline's; on filaments a handful of merged close pairs
    there, each 20-70 nm off at a CRLB of 2-5 nm, decides the RMSE. ``rule`` None: off."""
    return _below_score(sparse_packet_rows(item, kept, n_frames, rule, history), score, rule)


def _below_score(rows: np.ndarray, score: np.ndarray, rule: dict | None) -> np.ndarray:
    """The ``rows`` (bool mask) scored below ``rule["score"]``; ``rule`` None: none."""
    return rows & (score < np.float32(rule["score"])) if rule else np.zeros(len(rows), bool)


def merged_singles(L: Localizations, rows: np.ndarray, rule: dict | None, psf, pixel_nm: float) -> np.ndarray:
    """Of the sparse-acquisition rows (bool mask), the single fits that a two-emitter fit explains
    better by a 2 log-likelihood ratio above ``rule["merged_lr"]``, with its two emitters closer than
    ``rule["merged_sep_nm"]`` (nm: the same on any pixel size; bool mask; key absent: none). Two
    emitters 50-190 nm apart on a filament fit as one sit 20-90 nm from either at a CRLB of 2-4 nm
    and score 0.97-0.99 with the classifier; in a sparse acquisition the JI does not need them, and
    the pair fit's gain is the evidence the classifier lacks (isolated emitters exceed 16 in 0.2-1 %
    of cases, mostly with a dim second "emitter" pixels away: the separation cap keeps those). Only
    these rows get the extra fit, so crowded packets pay nothing."""
    from .localize import PAIR, pair_gain
    from .psf import DEFAULT_PSF

    out = np.zeros(len(rows), bool)
    if not rule or "merged_lr" not in rule:
        return out
    idx = np.nonzero(rows & ((L.flags & PAIR) == 0))[0]
    if len(idx):
        gain, sep = pair_gain(L, idx, psf or DEFAULT_PSF, pixel_nm)
        out[idx] = (gain > float(rule["merged_lr"])) & (sep * pixel_nm < float(rule.get("merged_sep_nm", np.inf)))
    return out


class StreamDensity:
    """Kept localizations per frame of each stream's recent frames (exponential memory of ``frames``
    frames), for :func:`sparse_packet_cut` on packets too short to tell on their own. Per worker
    process: with several workers each judges from the packets it serves."""

    def __init__(self, frames: float = 500.0, max_streams: int = 1024) -> None:
        self.frames, self.max_streams = float(frames), int(max_streams)
        self._seen: dict[str, tuple[float, float]] = {}

    def get(self, stream: str) -> tuple[float, float]:
        return self._seen.get(stream, (0.0, 0.0))

    def add(self, stream: str, n_frames: int, kept: int) -> None:
        f, k = self._seen.pop(stream, (0.0, 0.0))  # re-inserted last: the dict's order is least recently used first
        decay = float(np.exp(-n_frames / self.frames))
        if len(self._seen) >= self.max_streams:
            self._seen.pop(next(iter(self._seen)))  # the stream idle longest: bounded memory
        self._seen[stream] = (f * decay + n_frames, k * decay + kept)


def ambiguous(L: Localizations, count_bin: np.ndarray) -> np.ndarray:
    """Localizations the data cannot place: pair fits with a rival configuration
    (:func:`.mle.pair_alternatives`) within AMBIGUOUS_LL log-likelihood units, or a better one that
    cannot be reported (z mirrored or the pair axis turned: both fit the blob, and one of them is
    60-125 nm off, measured at 20k photons), in every frame; and, in sparse frames (like
    :func:`imprecise_pairs`, where the JI does not need them), fits of fewer than MIN_PHOTONS photons
    (the leftovers of a close pair after the second pass, with CRLBs of 85-570 nm that made them
    "good" to the classifier)."""
    sparse = count_bin <= PAIR_PRECISION_BIN
    margin = L.pair_margin if L.pair_margin is not None else np.full(len(L), np.inf)
    return (margin < AMBIGUOUS_LL) | (sparse & (L.photons < MIN_PHOTONS))


@dataclass
class Bundle:
    """A loaded model bundle: regression + classification backends and the conformal table."""

    name: str
    manifest: dict
    reg: object
    cls: object
    scale: object

    @classmethod
    def load(cls_, name: str, kind: str = "auto", root: Path = MODEL_DIR) -> "Bundle":
        from streamer.core.backends import load_backend

        d = root / name
        man = json.loads((d / "manifest.json").read_text())
        reg = load_backend(d / man["reg"], kind=kind, nthread=1)
        clf = load_backend(d / man["cls"], kind=kind, nthread=1)
        scale = load_backend(d / man["scale"], kind=kind, nthread=1)
        return cls_(name, man, reg, clf, scale)


def apply(L: Localizations, pixel_nm: float, b: "Bundle", psf=None, n_frames: int | None = None,
          density: "StreamDensity | None" = None, stream: str = "") -> dict[str, np.ndarray]:
    """Corrected localizations, score, intervals and flags for every candidate of ``L``; ``n_frames``:
    the packet's frames (for :func:`sparse_packet_cut`, :func:`merged_singles` and the sparse rows of
    :func:`imprecise_pairs`; None: no packet-level rule); ``density``: the recent frames of
    ``stream``, read for the rule and updated with this packet."""
    manifest = b.manifest
    X = features(L, pixel_nm)
    m = len(X)
    if m == 0:
        t, score, ls = np.zeros((0, 4)), np.zeros(0, np.float32), np.zeros((0, 3))
    else:
        t = np.asarray(b.reg.predict(X), np.float64).reshape(m, 4)
        score = np.asarray(b.cls.predict(X), np.float32).reshape(m)
        ls = np.asarray(b.scale.predict(X), np.float64).reshape(m, 3)
    sd = L.sd
    g = groups(X) if m else np.zeros(0, np.int64)
    # per-group weight of the trees' correction (chosen on held-out frames): where the fit is already
    # efficient (isolated emitters) a full correction only adds the trees' own noise
    w = np.asarray(manifest["shrink"])[g] if "shrink" in manifest and m else np.ones((m, 3))
    xyz = L.xyz + w * t[:, :3] * sd
    sd_logn = L.fit.sd[:, 3] / np.maximum(L.photons, 1.0)
    photons = L.photons * np.exp(np.clip(t[:, 3] * sd_logn, -3.0, 3.0))
    gq = conformal_groups(X, ls, manifest["conformal"].get("scale_edges")) if m else g
    q = np.asarray(manifest["conformal"]["q"])[gq] if m else np.zeros((0, 3))
    half = q * sd * np.exp(ls)
    flags = L.flags & ~np.uint8(REJECTED)
    thr = row_thresholds(np.asarray(manifest["score_threshold"], np.float32), X)
    cnt = crowding_bin(X)
    flags |= np.where(score < thr, np.uint8(REJECTED), np.uint8(0))
    flags[imprecise_pairs(L, cnt, pixel_nm, psf)] |= REJECTED
    flags[ambiguous(L, cnt)] |= REJECTED
    flags[(L.flags & DUPLICATE) != 0] |= REJECTED
    if n_frames is not None:
        kept = (flags & REJECTED) == 0
        history = density.get(stream) if density is not None else (0.0, 0.0)
        rule = manifest.get("sparse_packet")
        rows = sparse_packet_rows(L.item, kept, n_frames, rule, history)
        cut = _below_score(rows, score, rule)  # = sparse_packet_cut, whose rows the other rules need too
        flags[cut] |= REJECTED
        flags[merged_singles(L, rows & ~cut, rule, psf, pixel_nm)] |= REJECTED
        if rule and "pair_precision_k" in rule:
            # the precision filter of sparse frames, over every frame of a sparse acquisition: a frame
            # of <= 6 kept localizations may hold more candidates (rejected ones count for count_bin)
            flags[imprecise_pairs(L, cnt, pixel_nm, psf, float(rule["pair_precision_k"]), rows & ~cut)] |= REJECTED
        if density is not None:
            density.add(stream, n_frames, int(kept.sum()))
    return {"xyz": xyz, "photons": photons, "half": half, "score": score, "flags": flags.astype(np.uint8), "X": X}
