"""Qt-free state of the monitor shell: what every modality's results have in common.

The shell counts result messages and items, result seqs it never showed (display-side drops) or
saw twice, the arrival rate, the display lag (acquisition -> newest result on screen), errors by
reason, flag counts by name (from the watched modality's ``results.flags``) and the newest sink
statistics. The modality's view draws the results themselves: :meth:`MonitorState.ingest_results`
forwards each block of decoded result dicts of the watched modality to ``view.ingest``.
Everything here is plain numpy and bounded, so it is testable headless and a monitor left open
for days does not grow.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol

import numpy as np

from .ring import RingColumns

#: the reason of a notice on the error topic that is not a rejected packet
NOTICES = frozenset({"no-worker"})


class Ingests(Protocol):
    def ingest(self, results: list[dict[str, Any]]) -> None: ...


@dataclass
class Counters:
    """Numbers the shell's status panel shows."""

    items: int = 0  # items (tuples, frames, stacks) in the watched modality's results
    detections: int = 0  # rows of the results' ``m`` table (detections, localizations, ...)
    detection_noun: str = "detections"  # what those rows are (the modality's ResultSpec says)
    messages: int = 0  # result messages received (all modalities)
    other_messages: int = 0  # result messages of modalities other than the watched one (counted only)
    missed_messages: int = 0  # result seqs the monitor never saw (display-side drops, HWM)
    duplicate_messages: int = 0  # result seqs seen twice (the sink should never send these)
    rate: float = 0.0  # items/s arriving at the monitor, recent window
    latency_ms: dict[str, float] = field(default_factory=dict)  # display lag p50/p99 over recent frames
    rejected: int = 0  # error-channel messages that reject a packet
    errors_by_reason: dict[str, int] = field(default_factory=dict)  # every error message, notices included
    last_error: str = ""
    flag_counts: dict[str, int] = field(default_factory=dict)  # by flag name, since the monitor started
    pipeline: dict = field(default_factory=dict)  # summary of the newest sink statistics message
    model_ids: tuple[str, ...] = ()
    undecodable: int = 0  # payloads that failed to decode


class MonitorState:
    """Shell counters plus the hand-over of results to the view.

    ``flags``: bit -> name of the watched modality (``registry.get(name).results.flags``);
    ``modality``: results of other modalities are counted, not shown (None: show all);
    ``view``: anything with ``ingest(list_of_result_dicts)`` (None: count only).
    """

    def __init__(self, flags: Mapping[int, str] | None = None, *, modality: str | None = None,
                 view: Ingests | None = None, rate_window_s: float = 2.0, clock=time.monotonic,
                 max_streams: int = 10_000, detection_noun: str = "detections") -> None:
        self.flags = {int(b): str(n) for b, n in (flags or {}).items()}
        self.modality = modality
        self.view = view
        self.counters = Counters(flag_counts={name: 0 for name in self.flags.values()}, detection_noun=detection_noun)
        self._rate_window_s = rate_window_s
        self._arrivals: deque[tuple[float, int]] = deque()
        self._latency = RingColumns(300, {"latency": np.float64})  # ~10 s of frames
        self._last_seq: dict[str, int] = {}
        self._first_seq: dict[str, int] = {}  # seqs before the first one shown are not counted
        self._max_streams = max_streams
        self._model_ids: dict[str, None] = {}
        self._clock = clock
        self.version = 0  # bumped on every change, so the GUI redraws only when needed

    @classmethod
    def for_modality(cls, name: str, view: Ingests | None = None, **kwargs) -> "MonitorState":
        """State watching the installed modality ``name`` (flag names from its declaration)."""
        from ..core import registry

        return cls(registry.get(name).results.flags, modality=name, view=view, **kwargs)

    # -- results --------------------------------------------------------------------------
    def ingest_results(self, results: list[dict[str, Any]], lag_s: float | None = None) -> None:
        """One frame's decoded result dicts (oldest first, as :func:`streamer.core.wire.decode_message`
        returns them). ``lag_s``: age of the newest one (acquisition -> on screen)."""
        if not results:
            return
        shown = []
        for res in results:
            self.note_message(res.get("seq", -1), res.get("model"), res.get("stream", ""))
            if self.modality is not None and res.get("modality", self.modality) != self.modality:
                self.counters.other_messages += 1
                continue
            shown.append(res)
        n = sum(int(r.get("n", 0)) for r in shown)
        c = self.counters
        c.items += n
        c.detections += sum(int(r["m"]) for r in shown if isinstance(r.get("m"), int))
        if self.flags:
            blocks = [np.asarray(r["flags"]).ravel() for r in shown if r.get("flags") is not None]
            if blocks:
                flags = np.concatenate(blocks).astype(np.uint8, copy=False)
                for bit, name in self.flags.items():
                    c.flag_counts[name] = c.flag_counts.get(name, 0) + int(np.count_nonzero(flags & bit))
        if lag_s is not None and np.isfinite(lag_s):
            self._latency.push(latency=np.array([lag_s], np.float64))
        self._arrivals.append((self._clock(), n))
        if shown and self.view is not None:
            self.view.ingest(shown)
        self.version += 1

    def note_message(self, seq: int, model_id: str | None = None, stream: str = "") -> None:
        """Track result sequence numbers: gaps are messages this monitor missed (not pipeline loss)."""
        c = self.counters
        c.messages += 1
        if not isinstance(seq, int) or seq < 0:
            return
        last = self._last_seq.get(stream)
        if last is None and len(self._last_seq) >= self._max_streams:  # bounded: forget the oldest stream
            old = next(iter(self._last_seq))
            del self._last_seq[old]
            self._first_seq.pop(old, None)
        self._first_seq.setdefault(stream, seq)
        if last is not None:
            if seq > last + 1:
                c.missed_messages += seq - last - 1
            elif seq <= last:
                c.duplicate_messages += 1
        if last is None or seq > last:
            self._last_seq[stream] = seq
        if model_id and model_id not in self._model_ids and len(self._model_ids) < 50:
            self._model_ids[model_id] = None
            c.model_ids = tuple(self._model_ids)

    def last_seq(self, stream: str = "") -> int | None:
        """Newest result seq seen on ``stream`` (None before the first)."""
        return self._last_seq.get(stream)

    def first_seq(self, stream: str = "") -> int | None:
        """First result seq seen on ``stream``: missed-message counting starts there."""
        return self._first_seq.get(stream)

    # -- stats and errors -----------------------------------------------------------------
    def note_stats(self, stats: Mapping[str, Any]) -> None:
        """Keep the newest statistics message from the sink (summarised for the panel)."""
        self.counters.pipeline = stats_summary(stats)
        self.version += 1

    def note_error(self, error: Mapping[str, Any] | str, count: int = 1) -> None:
        """An ``error`` message (decoded map, or just its reason)."""
        if isinstance(error, str):
            reason, detail = error.partition(":")[0].strip() or "?", error.partition(":")[2].strip()
        else:
            reason = str(error.get("reason") or "?")[:64]
            detail = str(error.get("detail") or "")
        c = self.counters
        if reason not in c.errors_by_reason and len(c.errors_by_reason) >= 100:
            reason = "other"
        c.errors_by_reason[reason] = c.errors_by_reason.get(reason, 0) + count
        if reason not in NOTICES:
            c.rejected += count
        where = ""
        if isinstance(error, Mapping) and isinstance(error.get("stream"), str):
            where = f" [{error['stream']}#{error.get('seq')}]"
        c.last_error = (f"{reason}: {detail}" if detail else reason)[:120] + where
        self.version += 1

    def note_undecodable(self, count: int = 1) -> None:
        self.counters.undecodable += count

    # -- windowed numbers -----------------------------------------------------------------
    def refresh_counters(self) -> Counters:
        """Recompute the windowed numbers (rate, display-lag percentiles)."""
        c = self.counters
        now = self._clock()
        while self._arrivals and self._arrivals[0][0] < now - self._rate_window_s:
            self._arrivals.popleft()
        if self._arrivals:
            span = max(now - self._arrivals[0][0], 1e-3)
            c.rate = sum(n for _, n in self._arrivals) / max(span, min(self._rate_window_s, 0.5))
        else:
            c.rate = 0.0
        lat = self._latency.column("latency")
        c.latency_ms = ({"p50": float(np.percentile(lat, 50) * 1e3), "p99": float(np.percentile(lat, 99) * 1e3)}
                        if len(lat) else {})
        return c


def stats_summary(stats: Mapping[str, Any]) -> dict:
    """The sink statistics worth a line in the status panel (keys of
    :data:`streamer.pipeline.stats.STATS_FIELDS`)."""
    out: dict = {}
    if isinstance(stats.get("rate_tuples_s"), (int, float)):
        out["items/s"] = float(stats["rate_tuples_s"])
    lat = stats.get("latency_ms")
    if isinstance(lat, Mapping):
        for q in ("p50", "p99"):
            if isinstance(lat.get(q), (int, float)):
                out[f"latency {q} ms"] = float(lat[q])
    for key in ("tuples", "gaps", "duplicates", "rejected", "resent", "workers", "queued"):
        if isinstance(stats.get(key), (int, float)) and not isinstance(stats.get(key), bool):
            out["items" if key == "tuples" else key] = stats[key]
    unserved = stats.get("unserved")
    if isinstance(unserved, Mapping):
        held = {str(k): v for k, v in unserved.items() if isinstance(v, int) and v > 0}
        if held:
            out["unserved"] = held
    return out
