"""Replay benchmark of the local pipeline: throughput, latency, memory, and backends side by side.

    .venv/bin/python bench/bench_pipeline.py --quick   # ~2 min: smaller runs, same tables
    .venv/bin/python bench/bench_pipeline.py           # full run (~5 min on 2 cores)

A static-regime acquisition (seeded) is simulated once, written to a replay file and loaded back;
every run replays that recording through sink + N worker processes (``LocalPipeline``) from this
process. Measured, all in one invocation so that ratios are side by side:

* throughput and latency vs workers (1, 2) and packet size (10 .. 10k), as fast as possible;
* latency at paced rates (10k tuples/s in packets of 10: the DESIGN target p99 < 5 ms; and more);
* the live monitor attached (a headless ``streamer monitor`` subscribed to the sink);
* backends on identical data: compiled ensemble, XGBoost native, closed-form, MLE (1 core in
  process, and end to end through the pipeline), with accuracy against the simulation truth;
* peak RSS (VmHWM) of sink, workers and monitor.

Writes ``bench/results/pipeline[-quick].json`` and ``.png`` and replaces the sections
"## End-to-end pipeline" and "## Estimator backends on identical data" of ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from pipeline_helpers import PeakRSS, cpu_seconds, plot, self_peak_rss_mib  # noqa: E402
from streamer.core.results_md import write_sections  # noqa: E402

from streamer.pipeline import defaults  # noqa: E402
from streamer.pipeline.launcher import LocalPipeline  # noqa: E402
from streamer.pipeline.publisher import replay  # noqa: E402
from streamer.modalities.minflux.predictor import load_predictor  # noqa: E402
from streamer.modalities.minflux.recording import Recording, load_recording  # noqa: E402
from streamer.modalities.minflux.simulate import simulate  # noqa: E402

RESULTS_MD = ROOT / "bench" / "RESULTS.md"
SEED = 20_261_123
SECTION_PIPELINE = "## End-to-end pipeline"
SECTION_BACKENDS = "## Estimator backends on identical data"

MODES = {
    # tuples per as-fast-as-possible run, by packet size; seconds per paced run; backend data size
    "quick": {"grid": {10: 30_000, 100: 150_000, 1000: 600_000, 10_000: 600_000}, "paced_s": 2.0,
              "backend_tuples": 20_000, "backend_pipe_s": 1.5, "inproc_min_s": 0.3},
    "full": {"grid": {10: 100_000, 100: 500_000, 1000: 2_000_000, 10_000: 2_000_000}, "paced_s": 6.0,
             "backend_tuples": 100_000, "backend_pipe_s": 4.0, "inproc_min_s": 1.0},
}
PACED = [(10_000, 10, 1), (10_000, 10, 2), (100_000, 100, 2), (300_000, 1000, 2)]  # tuples/s, packet, workers
BACKENDS = [  # label, in-process factory spec, pipeline spec
    ("compiled", "static:compiled", "static"),
    ("xgboost native", "static-xgboost", "static-xgboost"),
    ("closed-form", "closed-form", "closed-form"),
    ("MLE", "mle", "mle"),
]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "platform": platform.platform(), "loadavg_start": list(os.getloadavg())}


def take(rec: Recording, n: int) -> tuple[Recording, int]:
    """The first ``n`` tuples of ``rec`` (or all, repeated): (recording, repeat)."""
    if n <= len(rec):
        return rec.subset(slice(0, n)), 1
    return rec, math.ceil(n / len(rec))


# ------------------------------------------------------------------------------------------ pipeline

def run_pipeline(rec: Recording, **kw) -> dict:
    """:func:`_run_pipeline`, or a row with the error (a hung or failed run must not stop the bench)."""
    if kw.get("timeout") is None:  # generous for >= 10k tuples/s, yet a stalled run does not eat the bench
        kw["timeout"] = 30.0 + len(rec) * kw.get("repeat", 1) / 10_000
    try:
        return _run_pipeline(rec, **kw)
    except Exception as exc:
        n = len(rec) * kw.get("repeat", 1)
        return {k: kw.get(k) for k in ("workers", "predictor", "packet_size", "rate")} | {
            "tuples": n, "error": f"{type(exc).__name__}: {exc}"}


def _run_pipeline(rec: Recording, *, workers: int, predictor: str, packet_size: int, rate: float | None = None,
                  repeat: int = 1, monitor: bool = False, timeout: float = 600.0) -> dict:
    """One replay through a fresh local pipeline; throughput, latency, integrity, peak RSS."""
    mon = mon_cpu = None
    mon_cpu0 = 0.0
    with LocalPipeline(workers, predictor) as pipe, PeakRSS() as rss:
        rss.watch("sink", pipe.sink.pid)
        for i, w in enumerate(pipe.workers):
            rss.watch(f"worker{i}", w.pid)
        try:
            if monitor:
                env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
                mon = subprocess.Popen([sys.executable, "-m", "streamer.cli", "monitor", "--address",
                                        pipe.endpoints["results"], "--duration", str(timeout)],
                                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
                rss.watch("monitor", mon.pid)
                mon.stdout.readline()  # "monitor subscribed ..." once its event loop is about to start
                time.sleep(0.5)
                mon_cpu0 = cpu_seconds(mon.pid) or 0.0  # leave its start-up out of its CPU share
            t0 = time.perf_counter()
            sent = replay(rec, pipe.endpoints["ingest"], packet_size=packet_size, rate=rate, repeat=repeat,
                          confirm=pipe.endpoints["results"])
            summary = pipe.wait(timeout)
            wall = time.perf_counter() - t0
            mon_line = None
            if mon is not None:
                mon_cpu = (cpu_seconds(mon.pid) or 0.0) - mon_cpu0  # CPU time while the replay ran
                mon.send_signal(signal.SIGINT)
                out, _ = mon.communicate(timeout=30)
                mon_line = next((ln for ln in out.splitlines() if ln.startswith("monitor:")), out.strip()[-300:])
        finally:
            if mon is not None and mon.poll() is None:
                mon.kill()
                mon.wait()
    lat = summary.get("latency_ms", {})
    worker_peaks = [v for k, v in rss.peak.items() if k.startswith("worker")]
    return {
        "workers": workers, "predictor": predictor, "packet_size": packet_size, "rate": rate,
        "tuples": sent["tuples"], "tuples_out": summary["tuples"],
        "complete": summary["tuples"] == sent["tuples"] and summary["gaps"] == 0 and summary["rejected"] == 0,
        "tuples_per_s": sent["tuples"] / wall,  # publish start -> last result released by the sink
        "sink_tuples_per_s": summary.get("mean_rate_tuples_s"),
        "send_tuples_per_s": sent["send_rate_tuples_s"],
        "max_behind_schedule_s": sent["max_behind_schedule_s"],
        "wall_s": wall,
        "latency_ms": {k: lat.get(k) for k in ("p50", "p90", "p99", "max", "n")},
        "integrity": {k: summary.get(k) for k in ("gaps", "duplicates", "rejected", "resent")},
        "peak_rss_mib": {"sink": rss.peak.get("sink"), "worker_max": max(worker_peaks) if worker_peaks else None,
                         **({"monitor": rss.peak.get("monitor")} if monitor else {})},
        **({"monitor_summary": mon_line, "monitor_cpu_s": mon_cpu} if monitor else {}),
        "cpu_s": dict(rss.cpu_s),
    }


# ------------------------------------------------------------------------------------------ backends

def make_predictor(spec: str):
    if spec.endswith(":compiled"):  # the compiled library alone (the registry's "static" may route to XGBoost)
        from streamer.modalities.minflux.model_predictor import ModelPredictor

        return ModelPredictor(spec.split(":")[0], backend="compiled")
    return load_predictor(spec)


def in_process(predictor, rec: Recording, batch: int, min_s: float) -> dict:
    """Tuples/s of ``predictor.predict`` on 1 core over identical batches, plus accuracy vs truth."""
    batches = [rec.tuples[i:i + batch] for i in range(0, len(rec), batch)]
    preds = [predictor.predict(b) for b in batches]  # first pass: warm-up and the accuracy numbers
    n = done = 0
    t0 = time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < min_s or done == 0:
        for b in batches:
            predictor.predict(b)
            n += len(b)
        done += 1
    d = np.concatenate([p.distance for p in preds]).astype(np.float64)
    lo = np.concatenate([p.lower for p in preds])
    hi = np.concatenate([p.upper for p in preds])
    truth = rec.truth["d_nm"].astype(np.float64)
    ok = np.isfinite(d)
    out = {"tuples_per_s": n / elapsed, "rmse_nm": float(np.sqrt(np.mean((d[ok] - truth[ok]) ** 2))),
           "bias_nm": float(np.mean(d[ok] - truth[ok])), "finite_fraction": float(ok.mean())}
    has_int = np.isfinite(lo) & np.isfinite(hi)
    if has_int.any():
        out["coverage"] = float(np.mean((truth[has_int] >= lo[has_int]) & (truth[has_int] <= hi[has_int])))
        out["mean_width_nm"] = float(np.mean(hi[has_int] - lo[has_int]))
    return out


def bench_backends(rec: Recording, cfg: dict) -> list[dict]:
    data, _ = take(rec, cfg["backend_tuples"])
    rows = []
    for label, spec, pipe_spec in BACKENDS:
        row = {"label": label, "spec": spec, "pipeline_spec": pipe_spec}
        try:
            pred = make_predictor(spec)
        except Exception as exc:  # a missing trained bundle is a skip with its reason, not a crash
            row["skipped"] = f"{type(exc).__name__}: {exc}"
            log(f"backend {label}: skipped ({row['skipped']})")
            rows.append(row)
            continue
        row["model_id"] = pred.model_id
        ip = in_process(pred, data, 1000, cfg["inproc_min_s"])
        row["in_process_tuples_per_s"] = ip.pop("tuples_per_s")
        row["accuracy"] = ip
        log(f"backend {label}: {row['in_process_tuples_per_s']:,.0f} tuples/s in process, RMSE {ip['rmse_nm']:.2f} nm")
        # end to end: identical data, repeated so that the run lasts about backend_pipe_s
        est = min(2 * row["in_process_tuples_per_s"], 1.5e6)
        repeat = max(1, round(cfg["backend_pipe_s"] * est / len(data)))
        try:
            row["pipeline"] = run_pipeline(data, workers=2, predictor=pipe_spec, packet_size=1000, repeat=repeat,
                                       timeout=cfg["timeout"])
            log(f"backend {label} end to end: {describe(row['pipeline'])}")
        except Exception as exc:
            row["pipeline"] = {"error": f"{type(exc).__name__}: {exc}"}
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------ report

def describe(r: dict) -> str:
    if "error" in r:
        return f"FAILED ({r['error']})"
    lat = r["latency_ms"]
    return (f"{r['tuples_per_s']:,.0f} tuples/s, latency p50 {lat['p50']:.3g} p99 {lat['p99']:.3g} ms, "
            f"complete {r['complete']}")


def _f(v, fmt="{:,.0f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def _cores(r: dict) -> str:
    """Monitor CPU seconds per wall second while the replay ran (its start-up excluded)."""
    cpu = r.get("monitor_cpu_s")
    return "" if cpu is None else f"{cpu / r['wall_s']:.2f}"


def _lat(r: dict) -> str:
    lat = r["latency_ms"]
    return " / ".join(_f(lat.get(k), "{:.3g}") for k in ("p50", "p99", "max"))


def markdown_pipeline(res: dict, command: str, json_rel: str, png_rel: str) -> str:
    m = res["machine"]
    grid, paced, mon = res["throughput"], res["paced"], res["monitor"]
    out = [SECTION_PIPELINE, "",
           f"Produced by `{command}` on {res['date']} ({m['cpus']} CPUs, {m['cpu']}; load average "
           f"{m['loadavg_start'][0]:.1f} at start, {res['loadavg_end'][0]:.1f} at the end: a busy machine "
           f"lowers every number). Data: {res['data']}. Predictor in the workers: `{res['predictor']}`. "
           f"Raw numbers: `{json_rel}`; plot: `{png_rel}`.", "",
           "End-to-end throughput = tuples sent / (first packet sent -> last result released by the sink); "
           "latency = sink release time - packet `t_acq` (publisher send time), per packet. Sent as fast as "
           "possible, latency is mostly waiting in the pipeline's bounded queues; the paced table below is "
           "what a live acquisition sees.", "",
           "| workers | packet | tuples | end-to-end tuples/s | sink tuples/s | latency p50 / p99 / max (ms) | "
           "complete | peak RSS sink / worker (MiB) |",
           "|---:|---:|---:|---:|---:|---|---|---|"]
    for r in grid:
        if "error" in r:
            out.append(f"| {r['workers']} | {r['packet_size']:,} | {r['tuples']:,} | failed: {r['error'][:120]} | | | | |")
            continue
        out.append(f"| {r['workers']} | {r['packet_size']:,} | {r['tuples']:,} | {_f(r['tuples_per_s'])} | "
                   f"{_f(r['sink_tuples_per_s'])} | {_lat(r)} | {'yes' if r['complete'] else 'NO'} | "
                   f"{_f(r['peak_rss_mib']['sink'], '{:.0f}')} / {_f(r['peak_rss_mib']['worker_max'], '{:.0f}')} |")
    best = max((r for r in grid if "error" not in r), key=lambda r: r["tuples_per_s"], default=None)
    out += ["", "no successful run" if best is None else f"Best end-to-end: **{best['tuples_per_s']:,.0f} tuples/s** ({best['workers']} workers, packets of "
            f"{best['packet_size']:,}); target >= 300,000.", "",
            "Paced like a live acquisition (publisher on a fixed schedule):", "",
            "| rate (tuples/s) | packet | workers | tuples | latency p50 / p90 / p99 / max (ms) | "
            "publisher behind schedule (max, ms) | complete |",
            "|---:|---:|---:|---:|---|---:|---|"]
    for r in paced:
        if "error" in r:
            out.append(f"| {r['rate']:,.0f} | {r['packet_size']:,} | {r['workers']} | {r['tuples']:,} | "
                       f"failed: {r['error'][:120]} | | |")
            continue
        lat = r["latency_ms"]
        out.append(f"| {r['rate']:,.0f} | {r['packet_size']:,} | {r['workers']} | {r['tuples']:,} | "
                   + " / ".join(_f(lat.get(k), "{:.3g}") for k in ("p50", "p90", "p99", "max"))
                   + f" | {r['max_behind_schedule_s'] * 1e3:.1f} | {'yes' if r['complete'] else 'NO'} |")
    target = next((r for r in paced if r["rate"] == 10_000 and r["packet_size"] == 10 and r["workers"] == 2
                   and "error" not in r), None)
    if target:
        out += ["", f"Latency at 10,000 tuples/s in packets of 10 (2 workers): **p99 {target['latency_ms']['p99']:.3g} ms** "
                "(target < 5 ms)."]
    if mon:
        out += ["", "With a live monitor attached (headless `streamer monitor` subscribed to the sink, same run "
                "otherwise; the monitor shares the 2 cores):", "",
                "| run | monitor | end-to-end tuples/s | latency p50 / p99 / max (ms) | peak RSS monitor (MiB) | "
                "monitor CPU (cores, during the replay) | monitor summary |",
                "|---|---|---:|---|---:|---:|---|"]
        for r in mon:
            if "error" in r:
                out.append(f"| {r['label']} | {'yes' if r['with_monitor'] else 'no'} | failed: {r['error'][:120]} | | | | |")
                continue
            out.append(f"| {r['label']} | {'yes' if r['with_monitor'] else 'no'} | "
                       f"{_f(r['tuples_per_s'])} | {_lat(r)} | {_f(r['peak_rss_mib'].get('monitor'), '{:.0f}')} | "
                       f"{_cores(r)} | {r.get('monitor_summary') or ''} |")
    out += ["", f"Peak RSS of the bench process (publisher, holds the recording): {res['bench_peak_rss_mib']:.0f} MiB. "
            "Peak RSS = VmHWM from /proc, sampled every 0.1 s."]
    return "\n".join(out)


def markdown_backends(res: dict, command: str) -> str:
    rows = res["backends"]
    out = [SECTION_BACKENDS, "",
           f"Produced by `{command}` on {res['date']}. Identical data: the first {res['backend_tuples']:,} tuples of the "
           "same static-regime recording for every backend. In process: `predictor.predict` on 1 core, batches "
           "of 1000. End to end: 2 workers, packets of 1000, the same tuples replayed (repeated to last a few "
           "seconds); `static` lets the backend route by batch size (compiled library unless XGBoost is "
           "faster for that size), `static:compiled` forces the compiled library. Accuracy (a sanity check, "
           "not the accuracy benchmark) is against the simulation truth on these tuples.", "",
           "| backend | predictor (in process / pipeline) | in process tuples/s | end-to-end tuples/s | latency p99 (ms) | RMSE (nm) | bias (nm) | "
           "90% coverage | mean width (nm) |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "skipped" in r:
            out.append(f"| {r['label']} | `{r['spec']}` / `{r['pipeline_spec']}` | skipped: {r['skipped'][:160]} | | | | | | |")
            continue
        a, p = r["accuracy"], r.get("pipeline", {})
        pipe_rate = _f(p.get("tuples_per_s")) if "tuples_per_s" in p else f"error: {p.get('error', '')[:80]}"
        p99 = _f(p.get("latency_ms", {}).get("p99"), "{:.3g}") if "latency_ms" in p else "n/a"
        cov = f"{a['coverage']:.3f}" if "coverage" in a else "no interval"
        width = f"{a['mean_width_nm']:.2f}" if "mean_width_nm" in a else ""
        out.append(f"| {r['label']} | `{r['spec']}` / `{r['pipeline_spec']}` ({r['model_id']}) | "
                   f"{r['in_process_tuples_per_s']:,.0f} | "
                   f"{pipe_rate} | {p99} | {a['rmse_nm']:.2f} | {a['bias_nm']:+.2f} | {cov} | {width} |")
    ok = [r for r in rows if "in_process_tuples_per_s" in r]
    if len(ok) > 1:
        ref = min(ok, key=lambda r: r["in_process_tuples_per_s"])
        out += ["", "In-process speed relative to the slowest (" + ref["label"] + "): "
                + ", ".join(f"{r['label']} x{r['in_process_tuples_per_s'] / ref['in_process_tuples_per_s']:,.0f}"
                            for r in ok if r is not ref) + "."]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------ main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller runs (~2 min)")
    ap.add_argument("--predictor", default=defaults.DEFAULT_PREDICTOR,
                    help=f"predictor of the throughput/latency runs (default {defaults.DEFAULT_PREDICTOR})")
    ap.add_argument("--skip", nargs="*", default=[], choices=["grid", "paced", "monitor", "backends"],
                    help="leave parts out (their tables are then empty)")
    ap.add_argument("--packets", type=int, nargs="+", default=None,
                    help="packet sizes of the throughput grid (default 10 100 1000 10000)")
    ap.add_argument("--run-timeout", type=float, default=None,
                    help="seconds before one pipeline run is abandoned (default 30 s + 1 s per 10k tuples)")
    ap.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    args = ap.parse_args(argv)
    mode = "quick" if args.quick else "full"
    cfg = dict(MODES[mode])
    if args.packets:
        cfg["grid"] = {p: cfg["grid"].get(p, max(cfg["grid"].values())) for p in args.packets}
    cfg["timeout"] = args.run_timeout  # None: 30 s + 1 s per 10k tuples
    command = "python bench/bench_pipeline.py" + (" --quick" if args.quick else "")
    if args.predictor != defaults.DEFAULT_PREDICTOR:
        command += f" --predictor {args.predictor}"
    res: dict = {"mode": mode, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                 "machine": machine(), "predictor": args.predictor, "backend_tuples": cfg["backend_tuples"],
                 "throughput": [], "paced": [], "monitor": [], "backends": []}

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        path = Path(tmp) / "replay.npz"
        # a seed no training run uses, so that accuracy numbers are out of sample
        simulate("static", 200, 1000, seed=SEED).save(path)
        rec = load_recording(path)  # what is replayed comes from a recorded file
        res["data"] = f"static regime, {len(rec):,} tuples (200 rulers x 1000, seed {SEED}), replayed (repeated as needed)"
        log(f"recording: {len(rec):,} tuples; mode {mode}")

        if "grid" not in args.skip:
            for workers in (1, 2):
                for packet, n in cfg["grid"].items():
                    data, repeat = take(rec, n)
                    r = run_pipeline(data, workers=workers, predictor=args.predictor, packet_size=packet, repeat=repeat,
                                     timeout=cfg["timeout"])
                    res["throughput"].append(r)
                    log(f"{workers} workers, packets of {packet:>6,}: {describe(r)}")
        if "paced" not in args.skip:
            for rate, packet, workers in PACED:
                data, repeat = take(rec, int(rate * cfg["paced_s"]))
                r = run_pipeline(data, workers=workers, predictor=args.predictor, packet_size=packet, rate=rate,
                                 repeat=repeat, timeout=cfg["timeout"])
                res["paced"].append(r)
                log(f"paced {rate:,}/s packets of {packet}, {workers} workers: {describe(r)}")
        if "monitor" not in args.skip:
            for label, rate, monitor in (("300k tuples/s paced, packets of 1000", 300_000, False),
                                         ("300k tuples/s paced, packets of 1000", 300_000, True),
                                         ("as fast as possible, packets of 1000", None, False),
                                         ("as fast as possible, packets of 1000", None, True)):
                data, repeat = take(rec, cfg["grid"][1000] if rate is None else int(rate * cfg["paced_s"]))
                r = run_pipeline(data, workers=2, predictor=args.predictor, packet_size=1000, rate=rate,
                                 repeat=repeat, monitor=monitor, timeout=cfg["timeout"])
                r["label"], r["with_monitor"] = label, monitor
                res["monitor"].append(r)
                log(f"{label}, monitor {monitor}: {describe(r)} {r.get('monitor_summary') or ''}")
        if "backends" not in args.skip:
            res["backends"] = bench_backends(rec, cfg)

    res["loadavg_end"] = list(os.getloadavg())
    res["bench_peak_rss_mib"] = self_peak_rss_mib()
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "pipeline" + ("-quick" if args.quick else "") + ("-partial" if args.skip else "")
    json_path, png_path = out_dir / f"{stem}.json", out_dir / f"{stem}.png"
    json_path.write_text(json.dumps(res, indent=1, default=float))
    plot(res, png_path)
    log(f"wrote {json_path} and {png_path}")
    if not args.no_write:
        rel = lambda p: str(p.relative_to(ROOT))  # noqa: E731
        sections = {}
        if res["throughput"]:
            sections[SECTION_PIPELINE] = markdown_pipeline(res, command, rel(json_path), rel(png_path))
        if res["backends"]:
            sections[SECTION_BACKENDS] = markdown_backends(res, command)
        write_sections(RESULTS_MD, sections)
        log(f"updated {RESULTS_MD} sections: {', '.join(sections)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
