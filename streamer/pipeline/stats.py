"""What the sink reports: the ``stats`` message fields and the latency histogram behind them."""

from __future__ import annotations

import numpy as np

#: keys of a ``stats`` message (besides v/kind/t) -> meaning; cumulative unless noted
STATS_FIELDS: dict[str, str] = {
    "uptime_s": "seconds since the sink started",
    "packets": "result packets released to the output (after dedupe)",
    "tuples": "items released to the output (tuples, frames, stacks; the name is kept from v1)",
    "items_by_modality": "{modality: items released}",
    "flagged_items_by_reason": "{reason: items released with the invalid-input flag (bad rows of otherwise good packets)}",
    "rate_tuples_s": "items/s over the last stats interval",
    "mean_rate_tuples_s": "items/s from the first to the last released packet",
    "latency_ms": "{p50, p90, p99, max, n} of t_sink - t_acq per packet in ms: over the last interval, "
                  "over the whole run (plus p99.9) when final",
    "gaps": "seqs never seen in a readable packet: skipped, missing at the end marker, or rejected "
            "before their header could be read",
    "late": "packets that arrived after a later seq and filled a gap (released, gap count decreased)",
    "sink_id": "random id of this sink run: a change tells publishers the sink restarted (re-send what is not covered)",
    "recovered": "packets found persisted in --out when this sink run started (an earlier run's results)",
    "duplicates": "packets whose (stream, seq) and content were already persisted or in flight (dropped, never processed twice)",
    "conflicts": "packets with the seq of a persisted result but other (valid) content: reported, kept in --out/conflicts",
    "rejected": "packets rejected (not in the output)",
    "rejected_tuples": "items in rejected packets whose n was readable",
    "rejected_bytes": "bytes of rejected packets",
    "rejected_by_reason": "{reason: packets}",
    "resent": "re-dispatches of a packet to another worker (worker died, left or timed out)",
    "redundant_answers": "second answers for an already answered packet (ignored)",
    "workers_lost": "workers dropped (dead, silent past the heartbeat timeout, or said BYE)",
    "workers": "workers seen alive within the heartbeat timeout",
    "in_flight": "packets dispatched to workers and not yet answered",
    "queued": "packets received and waiting for a worker",
    "unserved": "{modality: packets held because no live worker serves that modality}",
    "served": "modalities the live workers serve (null: some worker serves any)",
    "streams": "{stream: {next_seq, ended, watermark}}: watermark = first seq not yet durably settled "
               "(persisted and flushed, or rejected); publishers may forget every packet below it",
    "final": "true on the last stats message of a sink run",
}


# latency histogram: 0.001 ms .. 100 s, 100 log bins per decade (2.3% resolution), bounded memory
_EDGES_MS = np.logspace(-3, 5, 801)


class LatencyStats:
    """Per-packet latency (t_sink - t_acq): a cumulative histogram plus the current interval's values."""

    def __init__(self) -> None:
        self.hist = np.zeros(len(_EDGES_MS) + 1, np.int64)
        self.recent: list[float] = []
        self.max_ms = 0.0

    def add(self, ms: float) -> None:
        self.hist[np.searchsorted(_EDGES_MS, ms)] += 1
        self.max_ms = max(self.max_ms, ms)
        if len(self.recent) < 200_000:
            self.recent.append(ms)

    def interval(self) -> dict[str, float]:
        vals, self.recent = np.asarray(self.recent), []
        if not len(vals):
            return {"n": 0}
        p50, p90, p99 = np.percentile(vals, [50, 90, 99])
        return {"p50": p50, "p90": p90, "p99": p99, "max": float(vals.max()), "n": len(vals)}

    def overall(self) -> dict[str, float]:
        total = int(self.hist.sum())
        if not total:
            return {"n": 0}
        cum = np.cumsum(self.hist)
        # upper edge of the bin that holds the quantile (conservative by < 2.3%)
        q = {f"p{p:g}": min(self.max_ms, float(_EDGES_MS[min(np.searchsorted(cum, p / 100 * total),
                                                              len(_EDGES_MS) - 1)]))
             for p in (50, 90, 99, 99.9)}
        return {**q, "max": self.max_ms, "n": total}
