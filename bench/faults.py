"""Fault benchmark: kill -9 of a worker and of the sink mid-stream, fuzzed packets, durability's cost.

    .venv/bin/python bench/faults.py                      # every installed modality with a simulator
    .venv/bin/python bench/faults.py --modality minflux --items 1000000

Per modality, on its own simulated recording replayed through an acknowledged ``Publisher``
(``streamer.client.Publisher(results=...)``) into sink + 2 workers with ``--out``:
1. SIGKILL one worker once a third of the items are released;
2. SIGKILL the sink once a third is durably persisted, restart it on the same ``--out``;
3. 10,000 fuzzed packets (``streamer.core.fuzz``) interleaved with the good ones, on the same seqs;
and checks every good item persisted exactly once, in order. Then MINFLUX throughput with and
without durable results (``--out``), alternating, ratio in one run. Writes "## Faults and durability"
in bench/RESULTS.md with the command.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import zmq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamer.client import Subscriber, wait_for  # noqa: E402
from streamer.commands import simulation  # noqa: E402
from streamer.core import registry, wire  # noqa: E402
from streamer.core.fuzz import fuzz  # noqa: E402
from streamer.core.recording import packet_slices  # noqa: E402
from streamer.core.results_md import write_sections  # noqa: E402
from streamer.pipeline.launcher import LocalPipeline, run_local_pipeline  # noqa: E402
from streamer.pipeline.publisher import replay  # noqa: E402
from streamer.pipeline.results import load_results  # noqa: E402

SECTION = "## Faults and durability"


# Fault runs check delivery, not accuracy: small diffusion stacks keep a 1 M-item run to minutes on 2 cores
# (the item shape is in the table); the other modalities use their simulator's defaults.
FAULT_OPTIONS = {"diffusion": ["--size", "16", "--frames", "8"]}


def simulate(name: str, items: int | None, options: list[str] = ()):
    if name == "minflux" and items:
        options = ["--traces", str(max(1, items // 1000)), "--tuples-per-trace", "1000", *options]
    return simulation.recording(registry.get(name), options)


def item_shape(rec) -> str:
    """What one item of the recording is: a tuple of k values, a frame, a stack."""
    a = rec.arrays[next(iter(rec.arrays))]
    return "x".join(map(str, a.shape[1:])) or "scalar"


def exactly_once(out: Path, modality: str, n: int, size: int, per_repeat: int | None = None) -> str:
    """Every item once, in order: packet k of the replay holds the items of its slice (the last
    packet of each repeat of the recording may be short)."""
    res = load_results(out, modality)
    per_repeat = per_repeat or n
    sizes = [sl.stop - sl.start for sl in packet_slices(per_repeat, size)] * (n // per_repeat)
    start = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    if res["seq"].max(initial=-1) >= len(sizes):
        return f"FAILED: seq {res['seq'].max()} beyond the {len(sizes)} packets sent"
    idx = start[res["seq"]] + res["row"]
    if len(idx) == n and np.array_equal(idx, np.arange(n)):
        return "exactly once, in order"
    dup = len(idx) - len(np.unique(idx))
    return f"FAILED: {len(np.unique(idx)):,} of {n:,} items, {dup:,} duplicated"


def fault_run(name: str, rec, size: int, fault: str, tmp: Path, repeat: int = 1) -> dict:
    out = tmp / f"{name}-{fault}"
    errors: list = []
    with LocalPipeline(2, f"{name}:", out_dir=str(out)) as pipe:
        def go():
            try:
                replay(rec, pipe.endpoints["ingest"], packet_size=size, confirm=pipe.endpoints["results"],
                       confirm_timeout=600, repeat=repeat)
            except BaseException as exc:
                errors.append(exc)
        t0 = time.perf_counter()
        t = threading.Thread(target=go, daemon=True)
        t.start()
        sub = Subscriber(pipe.endpoints["results"], topics=["stats"])

        def third(_t, m):
            wm = m.get("streams", {}).get("replay", {}).get("watermark", 0)
            return m.get("tuples", 0) >= len(rec) * repeat // 3 and (fault == "worker" or wm > 0)

        hit = wait_for(sub, third, 900) is not None
        sub.close()
        if fault == "worker":
            pipe.kill_worker(0)
        else:
            pipe.restart_sink()
        t.join(900)
        summary = pipe.wait(300)
    return {"modality": name, "fault": f"kill -9 {fault}" + (" + restart" if fault == "sink" else ""),
            "items": len(rec) * repeat, "injected mid-stream": hit, "wall_s": round(time.perf_counter() - t0, 1),
            "outcome": "publisher error: " + repr(errors[0]) if errors else exactly_once(out, name, len(rec) * repeat, size,
                                                                              len(rec)),
            "recovered packets": summary.get("recovered", 0), "resent": summary.get("resent", 0)}


def fuzz_run(name: str, rec, size: int, n_fuzz: int, tmp: Path) -> dict:
    out = tmp / f"{name}-fuzz"
    kind = rec.kind
    spec = registry.get(name).packet_kind(kind)
    goods = [wire.encode_packet(name, kind, "fuzz", s, {**rec.header, spec.item_key: sl.stop - sl.start},
                                {k: v[sl] for k, v in rec.arrays.items()}, spec)
             for s, sl in enumerate(packet_slices(len(rec), size))]
    expected: dict[str, int] = {}
    n_bad = 0
    t0 = time.perf_counter()
    with LocalPipeline(2, f"{name}:", out_dir=str(out)) as pipe:
        push = zmq.Context.instance().socket(zmq.PUSH)
        push.connect(pipe.endpoints["ingest"])
        nxt = 0  # bad packets are made and sent one at a time (big packets x 10,000 do not fit in memory)
        for g, raw, why in fuzz(goods, n_fuzz, seed=1, item_key=spec.item_key):
            while nxt < g:  # each good packet after the bad ones that carry its seq
                push.send(goods[nxt])
                nxt += 1
            push.send(raw)
            expected[why] = expected.get(why, 0) + 1
            n_bad += 1
        for good in goods[nxt:]:
            push.send(good)
        push.send(wire.encode_end("fuzz", len(goods), name))
        summary = pipe.wait(600)
        push.close(0)
        alive = all(w.poll() is None for w in pipe.workers)
    dup = expected.pop("duplicate", 0)
    counted = summary["rejected_by_reason"] == expected and summary["duplicates"] == dup
    return {"modality": name, "fault": f"{n_bad:,} fuzzed packets on the good packets' seqs",
            "items": len(rec), "injected mid-stream": True, "wall_s": round(time.perf_counter() - t0, 1),
            "outcome": exactly_once(out, name, len(rec), size) + ("; every bad packet counted under its reason"
                                                                  if counted else f"; COUNTS DIFFER {summary['rejected_by_reason']}")
            + ("" if alive and summary["workers_lost"] == 0 else "; A WORKER DIED"),
            "recovered packets": 0, "resent": 0}


def durability_cost(rec, rounds: int, tmp: Path, repeat: int = 1) -> list[dict]:
    rates: dict[str, list[float]] = {"durable (--out, Parquet, acknowledged)": [], "no --out": []}
    for r in range(rounds):
        order = list(rates) if r % 2 == 0 else list(rates)[::-1]
        for label in order:
            out = str(tmp / f"cost-{r}") if label.startswith("durable") else None
            s = run_local_pipeline(rec, workers=2, predictor="minflux:static", packet_size=1000, out_dir=out,
                                   repeat=repeat)
            rates[label].append(s["mean_rate_tuples_s"])
    ref = statistics.median(rates["no --out"])
    return [{"setting": k, "median": statistics.median(v), "runs": ", ".join(f"{x / 1e3:,.0f}k" for x in v),
             "ratio": statistics.median(v) / ref} for k, v in rates.items()]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modality", action="append", default=None)
    p.add_argument("--items", type=int, default=1_000_000, help="MINFLUX tuples per fault run")
    p.add_argument("--other-items", type=int, default=1_000_000,
                   help="items per fault run of the other modalities (their recording replayed several times)")
    p.add_argument("--fuzz", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=3, help="durability-cost rounds")
    p.add_argument("--cost-items", type=int, default=2_000_000,
                   help="MINFLUX tuples simulated for the durability-cost runs (results are flushed mid-run: a "
                        "flush comes every 2^20 tuples or 1 s)")
    p.add_argument("--cost-repeat", type=int, default=5, help="each cost run replays them this many times (sustained)")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    cmd = "`.venv/bin/python bench/faults.py " + " ".join(map(shlex.quote, sys.argv[1:])) + "`"
    names = args.modality or [n for n in registry.names() if hasattr(registry.get(n).commands, "simulate")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="streamer-faults-") as tmp:
        tmp = Path(tmp)
        for name in names:
            rec = simulate(name, args.items, FAULT_OPTIONS.get(name, []))
            size = getattr(registry.get(name).commands, "demo_packet_size", 1000)
            repeat = 1 if name == "minflux" else max(1, -(-args.other_items // len(rec)))
            for fault in ("worker", "sink"):
                rows.append({**fault_run(name, rec, size, fault, tmp, repeat), "item": item_shape(rec), "command": cmd})
                print(rows[-1], flush=True)
            # small packets for the fuzz run: 10,000 mutated copies of a 30 MB packet would not fit in memory
            rows.append({**fuzz_run(name, rec, min(size, 1000 if name == "minflux" else 4), args.fuzz, tmp),
                         "item": item_shape(rec), "command": cmd})
            print(rows[-1], flush=True)
        cost = durability_cost(simulate("minflux", args.cost_items), args.rounds, tmp, args.cost_repeat) if args.rounds else []
    store = ROOT / "bench" / "results" / "faults.json"
    kept = json.loads(store.read_text()) if store.is_file() else {"rows": [], "cost": []}
    rows = [r for r in kept["rows"] if r["modality"] not in names] + rows
    rows.sort(key=lambda r: r["modality"])
    cost_what = (f"{args.cost_items * args.cost_repeat / 1e6:g}M tuples ({args.cost_items / 1e6:g}M replayed x "
                 f"{args.cost_repeat})" if cost else kept.get("cost_what", "0.3M tuples"))
    cost_cmd = cmd if cost else kept.get("cost_command", "")
    cost = cost if cost else kept["cost"]
    store.parent.mkdir(parents=True, exist_ok=True)
    store.write_text(json.dumps({"rows": rows, "cost": cost, "cost_what": cost_what, "cost_command": cost_cmd}, indent=1, default=str))
    cols = ["modality", "item", "fault", "items", "injected mid-stream", "outcome", "recovered packets", "wall_s"]
    table = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n" + "\n".join(
        "| " + " | ".join(f"{r[c]:,}" if isinstance(r.get(c), int) and not isinstance(r[c], bool) else str(r.get(c, "-"))
                          for c in cols) + " |" for r in rows)
    cost_table = (f"| MINFLUX, {cost_what}, packets of 1000, 2 workers | median tuples/s | runs | ratio |\n"
                  "|---|---|---|---|\n" + "\n".join(f"| {r['setting']} | {r['median']:,.0f} | {r['runs']} | "
                                                     f"{r['ratio']:.3f} |" for r in cost))
    print(table)
    print(cost_table)
    if not args.no_write:
        # each modality's rows are from the latest run that included it: say which command made them
        by_cmd: dict[str, list[str]] = {}
        for r in rows:
            by_cmd.setdefault(r.get("command", "(not recorded)"), [])
            if r["modality"] not in by_cmd[r.get("command", "(not recorded)")]:
                by_cmd[r.get("command", "(not recorded)")].append(r["modality"])
        made = "\n".join(f"- {', '.join(m)}: {c}" for c, m in by_cmd.items())
        write_sections(ROOT / "bench" / "RESULTS.md", {SECTION: f"{SECTION}\n\nCommands (2-core VM shared with other "
                       f"sessions; ratios are side by side in one run):\n\n{made}\n\n{table}\n\nCost of durability "
                       f"(alternating rounds; {cost_cmd or 'command not recorded'}):\n\n{cost_table}\n"})
    return 0 if all(r["outcome"].startswith("exactly once") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
