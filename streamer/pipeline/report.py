"""Human-readable summary of a sink run (used by ``streamer run`` and ``streamer demo``)."""

from __future__ import annotations

from typing import Any


def format_summary(s: dict[str, Any], unit: str = "tuples") -> str:
    """A few lines; ``unit`` names the items (tuples, frames, stacks)."""
    lat = s.get("latency_ms", {})
    pub = s.get("publisher", {})
    lines = [
        f"{unit + ' out':<18}{s['tuples']:,} in {s['packets']:,} packets"
        + (f" (sent {pub['tuples']:,} in {pub['packets']:,})" if pub else ""),
        (f"throughput        {s['mean_rate_tuples_s']:,.0f} {unit}/s at the sink (first to last result)"
         if s.get("mean_rate_tuples_s") and s["packets"] >= 3 else
         f"throughput        n/a at the sink ({s['packets']} packets: a rate needs 3 or more)")
        + (f"; publisher sent at {pub['send_rate_tuples_s']:,.0f} {unit}/s" if pub else ""),
    ]
    if lat.get("n"):
        lines.append(f"latency (ms)      p50 {lat['p50']:.3g}  p90 {lat['p90']:.3g}  p99 {lat['p99']:.3g}  "
                     f"max {lat['max']:.3g}   (t_acq -> sink, {lat['n']:,} packets)")
    lines.append(f"integrity         gaps {s['gaps']}  duplicates {s['duplicates']}  rejected {s['rejected']} "
                 f"{s['rejected_by_reason'] or ''}  re-sent {s['resent']}  workers lost {s['workers_lost']}")
    return "\n".join(lines)
