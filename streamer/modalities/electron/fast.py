"""Numba kernels of the dense-frame hot path (detection, candidate features, event features).

Same definitions as the vectorised numpy code in :mod:`.detect` and :mod:`.features` (which stays the
reference and the fallback when numba is not installed), but one pass per event with no
intermediate arrays: the numpy versions build (m, 13, 13) float copies, boolean masks and a KD-tree
per step, which at 576x576 with ~4,000 candidates per frame cost more than the four boosters.
Sums are accumulated in float64 (numpy sums float32 pairwise): values agree to float32 rounding,
exactly for integer ADU data.

Candidates are produced in raster order (frame, row, column), which the neighbour searches use:
the candidates of one frame row are a contiguous run (``row_start``).
"""

from __future__ import annotations

import math

import numpy as np

from streamer.core.jit import HAVE_NUMBA  # noqa: F401 (callers test it: without numba the numpy reference runs)
from streamer.core.jit import jit as _jit

#: pair features (:data:`.detect.PAIR_FEATURES`): the first PAIR_CANDIDATE_COLS candidate features of
#: each detection, then both probabilities, distance, Chebyshev distance, valley and relative valley
PAIR_CANDIDATE_COLS = 12
N_PAIR_FEATURES = 2 * PAIR_CANDIDATE_COLS + 6


@_jit
def _candidates(frames, level, offset, inv, box_e, cap):
    """3x3 local maxima (plateau: first pixel in raster order) with pixel >= ``level`` (raw units)
    and 3x3 charge >= ``box_e`` (electrons). Returns item, row, col, box, peak (electrons)."""
    n, h, w = frames.shape
    item = np.empty(cap, np.int32)
    row = np.empty(cap, np.int32)
    col = np.empty(cap, np.int32)
    box = np.empty(cap, np.float32)
    peak = np.empty(cap, np.float32)
    off = np.float32(offset)
    sc = np.float32(inv)
    k = 0
    for f in range(n):
        for y in range(h):
            for x in range(w):
                v = frames[f, y, x]
                if not (v >= level):
                    continue
                p = (np.float32(v) - off) * sc
                s = 0.0
                ok = True
                for dy in range(-1, 2):
                    yy = y + dy
                    for dx in range(-1, 2):
                        xx = x + dx
                        if yy < 0 or yy >= h or xx < 0 or xx >= w:
                            e = np.float32(0.0)
                        else:
                            e = (np.float32(frames[f, yy, xx]) - off) * sc
                        s += e
                        if e > p or (e >= p and (dy < 0 or (dy == 0 and dx < 0))):
                            ok = False
                if ok and np.float32(s) >= box_e:
                    item[k] = f
                    row[k] = y
                    col[k] = x
                    box[k] = np.float32(s)
                    peak[k] = p
                    k += 1
    return item[:k], row[:k], col[:k], box[:k], peak[:k]


@_jit
def _row_start(item, row, n, h):
    """Index of the first entry of each (frame, row) in raster-ordered points; (n*h + 1,)."""
    out = np.empty(n * h + 1, np.int64)
    j = 0
    for key in range(n * h + 1):
        while j < len(item) and item[j] * h + row[j] < key:
            j += 1
        out[key] = j
    return out


@_jit
def _stronger(i, j, box):
    """Candidate j outranks i: larger 3x3 charge, ties to the lower index."""
    return box[j] > box[i] or (box[j] == box[i] and j < i)


@_jit
def _val(frames, f, y, x, off, sc):
    return (np.float32(frames[f, y, x]) - off) * sc


@_jit
def _valley(frames, f, ys, xs, yw, xw, steps, off, sc):
    """Lowest pixel (electrons) on the straight line strictly between (ys, xs) and (yw, xw)."""
    d = max(abs(ys - yw), abs(xs - xw))
    dd = max(d, 1)
    best = np.inf
    for k in range(1, steps + 1):
        t = k / dd
        if t >= 1.0:
            break
        yy = int(np.rint(ys + (yw - ys) * t))
        xx = int(np.rint(xs + (xw - xs) * t))
        v = _val(frames, f, yy, xx, off, sc)
        if v < best:
            best = v
    return best


@_jit
def _candidate_features(frames, item, row, col, box, peak, r, threshold, offset, inv):
    """:data:`.detect.CANDIDATE_FEATURES` of every candidate (m, 37) float32."""
    n, h, w = frames.shape
    m = len(item)
    off = np.float32(offset)
    sc = np.float32(inv)
    th = np.float32(threshold)
    rs = _row_start(item, row, n, h)
    X = np.empty((m, 37), np.float32)
    for i in range(m):
        f, y, x = item[i], row[i], col[i]
        q = 0.0
        npix = 0
        x0, x1 = max(x - r, 0), min(x + r + 1, w)
        for yy in range(max(y - r, 0), min(y + r + 1, h)):
            fr = frames[f, yy]
            qr = np.float32(0.0)  # one row: branch-free, float32 (exact for integer ADU)
            for xx in range(x0, x1):
                e = (np.float32(fr[xx]) - off) * sc
                a = e > th
                qr += e if a else np.float32(0.0)
                npix += a
            q += qr
        n_str = 0
        n_weak = 0
        best = -1
        for yy in range(max(y - r, 0), min(y + r + 1, h)):
            key = f * h + yy
            for j in range(rs[key], rs[key + 1]):
                if j == i or abs(col[j] - x) > r:
                    continue
                if _stronger(i, j, box):
                    n_str += 1
                    if best < 0 or _stronger(best, j, box):
                        best = j
                else:
                    n_weak += 1
        X[i, 0] = peak[i]
        X[i, 1] = box[i]
        X[i, 2] = np.float32(q)
        X[i, 3] = npix
        X[i, 4] = n_str
        X[i, 5] = n_weak
        if best >= 0:
            X[i, 6] = box[best] / max(box[i], np.float32(1.0))
            X[i, 7] = max(abs(row[best] - y), abs(col[best] - x))
            X[i, 8] = math.hypot(row[best] - y, col[best] - x)
            X[i, 9] = _valley(frames, f, row[best], col[best], y, x, r, off, sc)
            X[i, 11] = peak[best] / max(peak[i], np.float32(1.0))
        else:
            X[i, 6] = 0.0
            X[i, 7] = r + 1
            X[i, 8] = r + 1
            X[i, 9] = -1.0
            X[i, 11] = 0.0
        nv = X[i, 9]
        X[i, 10] = nv / max(peak[i], np.float32(1.0)) if nv >= -0.5 else np.float32(-1.0)
        c = 12
        for dy in range(-2, 3):
            yy = y + dy
            for dx in range(-2, 3):
                xx = x + dx
                if yy < 0 or yy >= h or xx < 0 or xx >= w:
                    X[i, c] = 0.0
                else:
                    X[i, c] = _val(frames, f, yy, xx, off, sc)
                c += 1
    return X


@_jit
def _orphans(item, row, col, box, prob, keep, orphan_box, r, n, h):
    """:func:`.detect._orphans`: bright rejected candidates with nothing kept within ``r``; of
    neighbouring orphans only the most probable survives."""
    m = len(item)
    rs = _row_start(item, row, n, h)
    cand = np.zeros(m, np.bool_)
    for i in range(m):
        cand[i] = (not keep[i]) and box[i] >= orphan_box
    near = np.zeros(m, np.bool_)
    for i in range(m):
        if not cand[i]:
            continue
        f, y, x = item[i], row[i], col[i]
        for yy in range(max(y - r, 0), min(y + r + 1, h)):
            key = f * h + yy
            for j in range(rs[key], rs[key + 1]):
                if j != i and abs(col[j] - x) <= r and keep[j]:
                    near[i] = True
    orphan = cand & ~near
    out = orphan.copy()
    for i in range(m):
        if not orphan[i]:
            continue
        f, y, x = item[i], row[i], col[i]
        for yy in range(max(y - r, 0), min(y + r + 1, h)):
            key = f * h + yy
            for j in range(rs[key], rs[key + 1]):
                if j == i or abs(col[j] - x) > r or not orphan[j]:
                    continue
                if _stronger(i, j, box):  # pair (strong j, weak i): the weak one goes unless less probable
                    if prob[j] >= prob[i]:
                        out[i] = False
                elif prob[i] < prob[j]:
                    out[i] = False
    return out


@_jit
def _doubtful_pairs(item, row, col, prob, r, below, n, h):
    """(i, j), i < j: kept detections within Chebyshev ``r`` of one frame (raster-ordered) whose less
    probable member is below ``below``; one pass, arrays grown by doubling."""
    rs = _row_start(item, row, n, h)
    cap = max(16, len(item))
    pi = np.empty(cap, np.int64)
    pj = np.empty(cap, np.int64)
    k = 0
    for i in range(len(item)):
        f, y, x = item[i], row[i], col[i]
        for yy in range(y, min(y + r + 1, h)):
            key = f * h + yy
            for j in range(rs[key], rs[key + 1]):
                if j <= i or abs(col[j] - x) > r or min(prob[i], prob[j]) >= below:
                    continue
                if k == cap:
                    cap *= 2
                    ni = np.empty(cap, np.int64)
                    nj = np.empty(cap, np.int64)
                    ni[:k] = pi[:k]
                    nj[:k] = pj[:k]
                    pi, pj = ni, nj
                pi[k] = i
                pj[k] = j
                k += 1
    return pi[:k], pj[:k]


@_jit
def _pair_features(frames, item, row, col, peak, prob, Xk, r, below, offset, inv):
    """:func:`.detect.pair_features`: pairs (a, b) of kept detections within Chebyshev ``r`` of one
    frame (raster-ordered) whose less probable member is below ``below``, ``a`` the more probable,
    and their (k, len(PAIR_FEATURES)) features."""
    n, h, w = frames.shape
    pi, pj = _doubtful_pairs(item, row, col, prob, r, below, n, h)
    cnt = len(pi)
    a = np.empty(cnt, np.int64)
    b = np.empty(cnt, np.int64)
    X = np.empty((cnt, N_PAIR_FEATURES), np.float32)
    off = np.float32(offset)
    sc = np.float32(inv)
    m = PAIR_CANDIDATE_COLS
    for k in range(cnt):
        i, j = pi[k], pj[k]
        ai, bi = (i, j) if prob[i] >= prob[j] else (j, i)
        a[k] = ai
        b[k] = bi
        for c in range(m):
            X[k, c] = Xk[ai, c]
            X[k, m + c] = Xk[bi, c]
        X[k, 2 * m] = prob[ai]
        X[k, 2 * m + 1] = prob[bi]
        X[k, 2 * m + 2] = math.hypot(row[ai] - row[bi], col[ai] - col[bi])
        X[k, 2 * m + 3] = max(abs(row[ai] - row[bi]), abs(col[ai] - col[bi]))
        v = _valley(frames, item[ai], row[ai], col[ai], row[bi], col[bi], r, off, sc)
        X[k, 2 * m + 4] = v if v < np.inf else np.float32(-1.0)
        X[k, 2 * m + 5] = X[k, 2 * m + 4] / max(peak[bi], np.float32(1.0)) if v < np.inf else np.float32(-1.0)
    return a, b, X


@_jit
def _gather(frames, item, row, col, r, offset, inv):
    """Electron windows (m, 2r+1, 2r+1) float32; pixels outside the frame are 0."""
    n, h, w = frames.shape
    m = len(item)
    s = 2 * r + 1
    out = np.zeros((m, s, s), np.float32)
    off = np.float32(offset)
    sc = np.float32(inv)
    for i in range(m):
        f, y, x = item[i], row[i], col[i]
        for a in range(s):
            yy = y + a - r
            if yy < 0 or yy >= h:
                continue
            for b in range(s):
                xx = x + b - r
                if 0 <= xx < w:
                    out[i, a, b] = _val(frames, f, yy, xx, off, sc)
    return out


@_jit
def _crowded(item, row, col, r, n, h):
    """Another detection within Chebyshev ``r`` of the same frame (raster-ordered detections)."""
    m = len(item)
    rs = _row_start(item, row, n, h)
    out = np.zeros(m, np.bool_)
    for i in range(m):
        f, y, x = item[i], row[i], col[i]
        for yy in range(max(y - r, 0), min(y + r + 1, h)):
            key = f * h + yy
            for j in range(rs[key], rs[key + 1]):
                if j != i and abs(col[j] - x) <= r:
                    out[i] = True
    return out


@_jit
def _features(win, threshold, edges, raw_half):
    """:func:`.features.features` of electron windows: (X (m, 81) float32, fx, fy, tr).

    One pass over each window in its own orientation (charge, moments, rings, pixel count), the
    results mapped into the canonical frame (flip x, flip y, then transpose); only the raw pixels
    and the farthest pixel's tie-break read the canonical order. Branch-free float32 sums (exact
    for integer electron counts below 2**24, as numpy's)."""
    none = np.zeros(0, np.int32)
    return _event_features(win, np.zeros((1, 1, 1), np.float32), none, none, none, win.shape[-1] // 2, 0.0, 1.0,
                           False, threshold, edges, raw_half)


@_jit
def _features_from_frames(frames, item, row, col, r, offset, inv, threshold, edges, raw_half):
    """:func:`_features` of the ``(2r+1)^2`` windows around (item, row, col) read straight from the
    raw frames (pixels outside the frame are 0, as :func:`_gather`'s): the same numbers, without
    writing and re-reading a (m, 13, 13) window array (~70 MB per 40 frames of 576x576)."""
    return _event_features(np.zeros((0, 2 * r + 1, 2 * r + 1), np.float32), frames, item, row, col, r, offset,
                           inv, True, threshold, edges, raw_half)


@_jit
def _event_features(win, frames, item, row, col, r, offset, inv, from_frames, threshold, edges, raw_half):
    """The body of :func:`_features` (windows ``win``) and :func:`_features_from_frames` (``frames``)."""
    s = 2 * r + 1
    m = len(item) if from_frames else win.shape[0]
    _, h, w_ = frames.shape
    buf = np.zeros((s, s), np.float32)
    off = np.float32(offset)
    sc = np.float32(inv)
    nraw = (2 * raw_half + 1) ** 2
    nf = nraw + 8 + 13 + (r + 1) + 4
    X = np.empty((m, nf), np.float32)
    fxa = np.zeros(m, np.bool_)
    fya = np.zeros(m, np.bool_)
    tra = np.zeros(m, np.bool_)
    th = np.float32(threshold)
    z = np.float32(0.0)
    rings = np.zeros(r + 1, np.float32)
    cs = np.zeros((4, 3), np.float32)
    kk = np.arange(-r, r + 1).astype(np.float32)
    cheb = np.empty((s, s), np.int64)
    for a in range(s):
        for b in range(s):
            cheb[a, b] = max(abs(a - r), abs(b - r))
    for i in range(m):
        if from_frames:
            f, y0, x0 = item[i], row[i], col[i]
            for a in range(s):
                yy = y0 + a - r
                for b in range(s):
                    xx = x0 + b - r
                    buf[a, b] = _val(frames, f, yy, xx, off, sc) if (0 <= yy < h and 0 <= xx < w_) else z
            w = buf
        else:
            w = win[i]
        q = z
        m1x = z
        m1y = z
        m2x = z
        m2y = z
        mxy = z
        npix = 0
        far2 = np.float32(-1.0)
        rings[:] = 0.0
        for a in range(s):
            ka = kk[a]
            rq = z
            rx = z
            rxx = z
            for b in range(s):
                v = w[a, b]
                above = v > th
                t = v if above else z
                kb = kk[b]
                rq += t
                rx += t * kb
                rxx += t * kb * kb
                npix += above
                rings[cheb[a, b]] += t
                d2 = ka * ka + kb * kb if above else np.float32(-1.0)
                far2 = d2 if d2 > far2 else far2
            q += rq
            m1x += rx
            m2x += rxx
            m1y += rq * ka
            m2y += rq * ka * ka
            mxy += rx * ka
        # canonical orientation from the thresholded centroid
        tot32 = max(q, np.float32(1e-6))
        mx0 = m1x / tot32
        my0 = m1y / tot32
        fx = mx0 < 0
        fy = my0 < 0
        tr = abs(my0) > abs(mx0)
        fxa[i], fya[i], tra[i] = fx, fy, tr
        # canonical (a, b) reads win[p0 + a*pa + b*pb, q0 + a*qa + b*qb]
        sp = -1 if fy else 1
        sq = -1 if fx else 1
        p0 = s - 1 if fy else 0
        q0 = s - 1 if fx else 0
        if tr:
            pa, pb, qa, qb = 0, sp, sq, 0
        else:
            pa, pb, qa, qb = sp, 0, 0, sq
        c = 0
        for a in range(r - raw_half, r + raw_half + 1):
            for b in range(r - raw_half, r + raw_half + 1):
                X[i, c] = w[p0 + a * pa + b * pb, q0 + a * qa + b * qb]
                c += 1
        # 3x3 and 5x5 centroids (without / with the threshold), in the window's own frame
        cs[:, :] = 0.0
        for a in range(r - 2, r + 3):
            ka = kk[a]
            for b in range(r - 2, r + 3):
                kb = kk[b]
                v = w[a, b]
                t0 = v if v > z else z
                t1 = v if v > th else z
                cs[2, 0] += t0
                cs[2, 1] += t0 * kb
                cs[2, 2] += t0 * ka
                cs[3, 0] += t1
                cs[3, 1] += t1 * kb
                cs[3, 2] += t1 * ka
        box3 = z
        for a in range(r - 1, r + 2):
            ka = kk[a]
            for b in range(r - 1, r + 2):
                kb = kk[b]
                v = w[a, b]
                box3 += v
                t0 = v if v > z else z
                t1 = v if v > th else z
                cs[0, 0] += t0
                cs[0, 1] += t0 * kb
                cs[0, 2] += t0 * ka
                cs[1, 0] += t1
                cs[1, 1] += t1 * kb
                cs[1, 2] += t1 * ka
        for jj in range(4):
            t32 = cs[jj, 0] if cs[jj, 0] > 0 else np.float32(1.0)
            cx = cs[jj, 1] / t32
            cy = cs[jj, 2] / t32
            cx = -cx if fx else cx
            cy = -cy if fy else cy
            if tr:
                cx, cy = cy, cx
            X[i, c + 2 * jj] = cx
            X[i, c + 2 * jj + 1] = cy
        c += 8
        # moments in the canonical frame: a flip negates the first moment and the cross moment,
        # the transpose swaps x and y
        if fx:
            m1x = -m1x
            mxy = -mxy
        if fy:
            m1y = -m1y
            mxy = -mxy
        if tr:
            m1x, m1y = m1y, m1x
            m2x, m2y = m2y, m2x
        qs = max(np.float64(q), 1e-6)
        mx = m1x / qs
        my = m1y / qs
        sxx = m2x / qs - mx * mx
        syy = m2y / qs - my * my
        sxy = mxy / qs - mx * my
        trc = sxx + syy
        disc = math.sqrt(max((sxx - syy) ** 2 / 4 + sxy * sxy, 0.0))
        # farthest pixel above threshold: the first in canonical raster order at distance far2
        farx = -r
        fary = -r
        if far2 >= 0:
            best = s * s
            for a in range(s):
                ka = kk[a]
                for b in range(s):
                    if ka * ka + kk[b] * kk[b] == far2:
                        v = w[p0 + a * pa + b * pb, q0 + a * qa + b * qb]
                        if v > th and a * s + b < best:
                            best = a * s + b
            farx = best % s - r
            fary = best // s - r
        X[i, c] = mx
        X[i, c + 1] = my
        X[i, c + 2] = sxx
        X[i, c + 3] = syy
        X[i, c + 4] = sxy
        X[i, c + 5] = (trc / 2 + disc) / max(trc / 2 - disc, 0.05)
        X[i, c + 6] = q
        X[i, c + 7] = npix
        X[i, c + 8] = w[r, r]
        X[i, c + 9] = box3
        X[i, c + 10] = farx
        X[i, c + 11] = fary
        X[i, c + 12] = math.sqrt(max(far2, 0.0))
        c += 13
        for k in range(r + 1):
            X[i, c + k] = rings[k]
        c += r + 1
        e0, e1, e2, e3 = edges[i, 0], edges[i, 1], edges[i, 2], edges[i, 3]
        ex0, ex1 = (e1, e0) if fx else (e0, e1)
        ey0, ey1 = (e3, e2) if fy else (e2, e3)
        if tr:
            ex0, ex1, ey0, ey1 = ey0, ey1, ex0, ex1
        X[i, c] = ex0
        X[i, c + 1] = ex1
        X[i, c + 2] = ey0
        X[i, c + 3] = ey1
    return X, fxa, fya, tra


@_jit
def _charge_size(win, threshold):
    """Charge (e-) and pixel count above ``threshold`` of each window."""
    m, s, _ = win.shape
    q = np.zeros(m, np.float32)
    k = np.zeros(m, np.int32)
    th = np.float32(threshold)
    for i in range(m):
        t = 0.0
        c = 0
        for a in range(s):
            for b in range(s):
                v = win[i, a, b]
                if v > th:
                    t += v
                    c += 1
        q[i] = t
        k[i] = c
    return q, k



def raw_level(p_seed_e: float, adu_per_e: float, offset: float, dtype) -> float:
    """The seed level in the frames' own units (integer frames: rounded up, as in numpy)."""
    level = p_seed_e * adu_per_e + offset
    return float(level if np.dtype(dtype).kind == "f" else np.ceil(level))


def candidate_capacity(shape) -> int:
    """Local maxima are never 8-adjacent: at most one per 2x2 block."""
    n, h, w = shape
    return max(n * ((h + 1) // 2) * ((w + 1) // 2), 1)
