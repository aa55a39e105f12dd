"""The ``general`` worker predictor: instrument-aware model + live self-calibration + per-trace distance.

Per packet (vectorised; a Python loop only over the traces present in the packet, whose per-trace
steps -- window statistics, confirmation, sums, the pooled estimate -- are compiled, :mod:`.trace_kernels`):

1. per-axis harmonic terms of every tuple (:func:`.trace_kernels.harmonic_block`, the block of
   :func:`traces.harmonic_terms`);
2. per trace: streaming 2-on / 1-on / background segmentation (:class:`traces.Segmenter`);
3. per stream: calibration sums (b from background-only tuples, v0 from 1-on tuples);
4. the general model with the stream's instrument, on the tuples segmented 2-on (the others have
   one emitter or none, so no distance: NaN, ``FLAG_NOT_TWO_ON``): the user's calibration when given
   (``v0=``/``background=`` or ``STREAMER_MINFLUX_V0`` / ``STREAMER_MINFLUX_BACKGROUND`` in the
   worker's environment), else the live estimate (``FLAG_UNCALIBRATED`` until the stream has enough
   background-only and 1-on tuples; the prior is then used);
5. per trace: the running distance + 90% interval over its 2-on tuples (:class:`traces.TraceDistance`);
6. the sums steps 3 and 5 added, as the result's second table (:mod:`.partials`): merged over every
   worker's persisted results, they give each trace its answer from all its tuples.

State is per worker process: with several workers each sees part of a stream's packets, so the
live calibration converges on its share, segmentation windows restart at packet gaps and the live
per-trace columns are that worker's share; the merged partials (``streamer traces``) are the whole.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .general import REGIME, GeneralPredictor
from .partials import packet_partials
from .prediction import FLAG_NO_INTERVAL, FLAG_NOT_TWO_ON, FLAG_UNCALIBRATED, Prediction
from .simulate import STATE_ONE, STATE_TWO
from .trace_kernels import confirmed_states, harmonic_block, one_sums, rows_where, warm_up
from .traces import STATE_UNKNOWN, Segmenter, StreamCalibration, TraceDistance
from .tuples import TupleBatch, count_totals

ENV_V0 = "STREAMER_MINFLUX_V0"
ENV_BACKGROUND = "STREAMER_MINFLUX_BACKGROUND"


def _env_float(name: str) -> float | None:
    v = os.environ.get(name)
    return float(v) if v not in (None, "") else None


class _Stream:
    def __init__(self, prior_v0: float, prior_bg: float, window: int, block: int, sys_nm: float):
        self.cal = StreamCalibration(prior_v0=prior_v0, prior_background=prior_bg)
        self.seg = Segmenter(window=window)
        self.traces = TraceDistance(block=block, sys_nm=sys_nm)
        self.pending: dict[int, tuple] = {}  # trace -> (terms, n_tot, states, first unconfirmed) of the last tuples
        self.given: tuple[float, float] | None = None  # (v0, background) the model was given for the last packet


class LivePredictor:
    """Self-calibrating streaming predictor (see module doc); ``process`` returns every result array."""

    def __init__(self, bundle: str | Path = REGIME, v0: float | None = None, background: float | None = None,
                 backend: str = "auto", window: int = 40, block: int = 200) -> None:
        self.model = GeneralPredictor(bundle, backend=backend)
        warm_up()  # the compiled per-trace steps, at load time
        self.fixed_v0 = v0 if v0 is not None else _env_float(ENV_V0)
        self.fixed_bg = background if background is not None else _env_float(ENV_BACKGROUND)
        tc = self.model.manifest.get("trace_calibration", {})
        self.sys_nm = float(tc.get("sys_nm", 0.0))
        self.block = int(tc.get("block", block))
        self.window = window
        self.streams: dict[str, _Stream] = {}
        fixed = ",".join(f"{k}={v:g}" for k, v in (("v0", self.fixed_v0), ("b", self.fixed_bg)) if v is not None)
        self.model_id = self.model.model_id + (f"({fixed})" if fixed else "(self-calibrated)")

    def stream(self, name: str) -> _Stream:
        s = self.streams.get(name)
        if s is None:
            s = _Stream(self.fixed_v0 if self.fixed_v0 is not None else 0.9,
                        self.fixed_bg if self.fixed_bg is not None else 1.0, self.window, self.block, self.sys_nm)
            self.streams[name] = s
        return s

    def process(self, stream: str, batch: TupleBatch, measured: dict[str, float] | None = None) -> dict[str, np.ndarray]:
        """``measured``: v0 / background the user calibrated (an instrument profile's measured values;
        they override self-calibration for this packet, like ``v0=`` / ``background=``)."""
        n = len(batch)
        measured = measured or {}
        fixed_v0 = measured.get("v0", self.fixed_v0)
        fixed_bg = measured.get("background", self.fixed_bg)
        st = self.stream(stream)
        terms_all = harmonic_block(batch.counts, batch.positions)  # (n, 6, 2): P, Q, m0, var_pq, var_m0, var_q
        P, Q, var_pq = terms_all[:, 0], terms_all[:, 1], terms_all[:, 3]
        n_tot = count_totals(batch.counts)
        state = np.full(n, STATE_UNKNOWN, np.uint8)
        masks, keys = _trace_selections(batch.trace_id)
        for t, m in zip(keys, masks):  # segmentation (published with every tuple)
            state[m] = st.seg.segment(t, P[m], Q[m], var_pq[m], n_tot[m], st.cal.background)
        # Calibration sums and the per-trace distance use *confirmed* tuples only: a tuple whose
        # whole neighbourhood (``window`` tuples before and after) has its state. The trailing-window
        # segmentation mislabels a few tuples next to each change point, and a handful of 2-on tuples
        # among the 1-on ones would pull v0 down (measured: -3e-4 at v0 = 1, -0.3 nm at 15 nm per trace)
        w = self.window
        conf = []  # per trace: (terms (k, 6, 2), n_tot (k,), confirmed state (k,), 255 = not confirmed)
        for t, m in zip(keys, masks):
            terms = terms_all[m]
            old_terms, old_n, old_state, start = st.pending.get(
                t, (np.zeros((0, 6, 2), terms.dtype), np.zeros(0, n_tot.dtype), np.zeros(0, np.uint8), 0))
            A_terms = np.concatenate([old_terms, terms])
            A_n = np.concatenate([old_n, n_tot[m]])
            A_state = np.concatenate([old_state, state[m]])
            ready_end = len(A_state) - w
            if ready_end > start:
                ready = slice(start, ready_end)
                cstate = confirmed_states(A_state, start, ready_end, w, STATE_UNKNOWN)
                conf.append((t, A_terms[ready], A_n[ready], cstate))
                cut = max(0, ready_end - w)
                st.pending[t] = (A_terms[cut:], A_n[cut:], A_state[cut:], ready_end - cut)
            else:
                st.pending[t] = (A_terms, A_n, A_state, start)
        last = {t: (m.stop - 1 if isinstance(m, slice) else int(np.flatnonzero(m)[-1])) for t, m in zip(keys, masks)}
        summed = []  # per trace: what it adds to the trace sums and the calibration (also the partials)
        for t, x, nt, cs in conf:  # each sum once, for the calibration (or distance) and the partials alike
            bg_total, n_bg = st.cal.add_background(nt, cs, trace=t)
            one = one_sums(x, cs, STATE_ONE, st.cal.background)
            st.cal.add_one(*one, trace=t)
            rows2 = rows_where(x, cs, STATE_TWO)
            if len(rows2):
                st.traces.add_rows(t, rows2)
            summed.append((t, rows2, one[:2] if one[1] else None, bg_total, n_bg))
        partials = packet_partials(summed, last, self.block)
        v0 = fixed_v0 if fixed_v0 is not None else min(st.cal.v0, 1.0)  # v0 <= 1 physically
        bg = fixed_bg if fixed_bg is not None else st.cal.background
        st.given = (v0, bg)
        pred = self._two_on_only(batch, state, np.float32(v0), np.float32(bg), n_tot)
        flags = pred.flags
        if (fixed_v0 is None or fixed_bg is None) and not st.cal.calibrated:
            flags = flags | np.uint8(FLAG_UNCALIBRATED)
        # per-trace distance (pooled visibility, see traces.TraceDistance); background can differ
        # between traces (local autofluorescence): once a trace has its own background-only
        # segment, its per-trace distance uses it
        td = np.full(n, np.nan, np.float32)
        tlo, thi = td.copy(), td.copy()
        for t, m in zip(keys, masks):
            b_t, b_se = (bg, 0.0) if fixed_bg is not None else st.cal.trace_background_se(t)
            td[m], tlo[m], thi[m] = st.traces.estimate(
                t, v0, b_t, 0.0 if fixed_v0 is not None else st.cal.v0_se, b_se)
        return {"distance": pred.distance, "lower": pred.lower, "upper": pred.upper, "flags": flags,
                "state": state, "v0": np.full(n, v0, np.float32), "background": np.full(n, bg, np.float32),
                "trace_distance": td, "trace_lower": tlo, "trace_upper": thi, "photons": n_tot,
                **partials.arrays()}

    def _two_on_only(self, batch: TupleBatch, state: np.ndarray, v0, bg, totals: np.ndarray) -> Prediction:
        """The model on the tuples segmented 2-on; the rest NaN with ``FLAG_NOT_TWO_ON``. (A 1-on
        tuple's "distance" is the model's answer to a question without a second emitter: a value
        near 0 that histograms like a measurement. Rows are independent, so the 2-on rows get
        exactly the values a whole-packet call gives them.)"""
        two = state == STATE_TWO
        if two.all():
            return self.model.predict_with(batch, v0, bg, totals)
        n = len(batch)
        dist = np.full(n, np.nan, np.float32)
        lo, hi = dist.copy(), dist.copy()
        flags = np.full(n, FLAG_NOT_TWO_ON | FLAG_NO_INTERVAL, np.uint8)
        if two.any():
            sub = self.model.predict_with(batch[two], v0, bg, totals[two])
            dist[two], lo[two], hi[two], flags[two] = sub.distance, sub.lower, sub.upper, sub.flags
        return Prediction(dist, lo, hi, flags, self.model.model_id)


def _trace_selections(tids: np.ndarray) -> tuple[list, list[int]]:
    """Each trace's tuples in a packet, in order of first appearance, and the trace ids. A trace's
    tuples usually form one run: slices then (views), boolean masks only for interleaved traces
    (a mask copies every array it selects, per trace and per packet)."""
    n = len(tids)
    if n == 0:
        return [], []
    cut = np.flatnonzero(tids[1:] != tids[:-1]) + 1
    starts = np.concatenate([[0], cut])
    run_ids = tids[starts]
    if len(np.unique(run_ids)) == len(run_ids):
        ends = np.concatenate([cut, [n]])
        return [slice(int(a), int(b)) for a, b in zip(starts, ends)], [int(t) for t in run_ids]
    uniq, first = np.unique(tids, return_index=True)
    ordered = uniq[np.argsort(first)]
    return [tids == t for t in ordered], [int(t) for t in ordered]


class LiveModalityPredictor:
    """Adapter to the modality protocol (packet in, declared result arrays out).

    ``coverage``: what the bundle covers. Besides the worker's check of the stream's profile, two
    things the stream itself shows are checked here (vectorised, per packet): tuples whose beam
    positions give an L/2 outside the coverage, and -- with self-calibration on and the stream
    calibrated -- live v0/background outside it (the whole packet: they hold for the stream).
    Either gets the mismatch flag and no interval, counted as ``instrument-mismatch-measured``."""

    def __init__(self, **kw):
        self.inner = LivePredictor(**kw)
        self.model_id = self.inner.model_id

    @property
    def coverage(self):
        """What the bundle covers (read from its manifest once)."""
        cov = self.__dict__.get("_coverage")
        if cov is None:
            from .instrument import coverage

            cov = self.__dict__["_coverage"] = coverage(self.inner.model.manifest)
        return cov

    def predict(self, packet) -> dict:
        from .instrument import half_l_outside, mark_rows
        from .wire import RESULTS, result_arrays

        b = packet.extra["batch"]
        prof = packet.extra.get("profile")  # measured values of the stream's instrument profile override
        measured = {k: prof[k] for k in ("v0", "background")
                    if prof is not None and prof.provenance.get(k, "nominal") != "nominal"}
        out = self.inner.process(packet.stream, b, measured)
        res = result_arrays(packet, out["distance"], out["lower"], out["upper"], out["flags"], photons=out["photons"])
        declared = {a.name for a in (*RESULTS.items, *RESULTS.detections)} | {"item"}
        res.update({k: v for k, v in out.items() if k in declared and k not in res})
        bad = half_l_outside(self.coverage, b.positions) if packet.header.get("half_l") is None else None
        inner = self.inner
        fixed_v0, fixed_bg = measured.get("v0", inner.fixed_v0), measured.get("background", inner.fixed_bg)
        if fixed_v0 is None or fixed_bg is None:
            st = inner.streams[packet.stream]
            if st.cal.calibrated:  # two scalars per packet: the values the model was just given
                live = {}
                if fixed_v0 is None:
                    live["v0"] = st.given[0]
                if fixed_bg is None:
                    live["background"] = st.given[1]
                if self.coverage.outside(live):
                    bad = np.ones(packet.n, bool)
        if bad is not None:
            mark_rows(packet, res, bad, RESULTS.mismatch_flag)
        return res
