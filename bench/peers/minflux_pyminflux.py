"""minflux side by side with pyMINFLUX on one Abberior (Imspector) export -> bench/RESULTS.md.

One command:

    .venv/bin/python bench/peers/minflux_pyminflux.py [--traces-per-distance 20] [--tuples 4000] [--write]

1. Simulates dynamic two-emitter traces (our simulator: 2-on -> 1-on -> background, centre drift, 1 tuple/ms)
   and writes them as an Imspector m2205-style nested ``.npy`` export (the layout pyMINFLUX and our loader
   both read), with the per-exposure counts in ``phe``. Positions are placed in one absolute frame per
   ruler: emitter 1 (the survivor) at a random origin, emitter 2 at +d along theta; ``loc`` is what a
   single-emitter MINFLUX estimator reports (the harmonic phase of each axis' 3 counts), ``lcx/lcy`` =
   loc - pattern centre, ``ext`` = L.
2. Reads it with pyMINFLUX (``MinFluxReader`` in its own virtualenv ``.venv-pyminflux``, run as
   ``<peer python> bench/peers/minflux_pyminflux.py --peer JOB OUT``; that path imports only numpy /
   pandas / pyminflux) and with our ``load_abberior``: field-by-field parity where both read a field.
3. Distances per trace. Ours: ``LivePredictor`` (general model, self-calibrated v0 and background,
   streaming per-trace distance with a 90 % interval) on the loaded recording, last value per trace.
   pyMINFLUX user: per-trace mean localizations (``MinFluxProcessor.calculate_statistics_on``, pyMINFLUX's
   mx/my) of the two-emitters-on part and of the one-emitter-on part; the single-emitter localization of
   a pair lies near the pair's (brightness-weighted) midpoint, so the estimate is
   d = 2 |mean(2-on) - mean(1-on)|. The user is *given the true switch times* (an oracle a real user
   replaces by eye in pyMINFLUX's time inspector), so this is the best a pyMINFLUX user can do here.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (bench/peers/common.py; stdlib only: the peer venv runs this file too)

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
PEER_ENV = "STREAMER_PYMINFLUX_PYTHON"
SECTION = "## Peers: minflux vs pyMINFLUX"
LAMBDA_NM = 640.0
K_NM = 4.0 * np.pi / LAMBDA_NM  # the standing wave's spatial frequency (physics.K_NM)
ITERS = 2
#: fields of the nested (m2205) export, as pyMINFLUX's reader creates them, plus per-exposure counts
ITR_FIELDS = [("itr", "<i4"), ("tic", "<u8"), ("loc", "<f8", (3,)), ("lnc", "<f8", (3,)), ("eco", "<i4"),
              ("ecc", "<i4"), ("efo", "<f8"), ("efc", "<f8"), ("sta", "<i4"), ("cfr", "<f8"), ("dcr", "<f8"),
              ("ext", "<f8", (3,)), ("gvy", "<f8"), ("gvx", "<f8"), ("eoy", "<f8"), ("eox", "<f8"),
              ("dmz", "<f8"), ("lcy", "<f8"), ("lcx", "<f8"), ("lcz", "<f8"), ("fbg", "<f8"), ("phe", "<i4", (6,))]
TOP_FIELDS = [("sqi", "<u4"), ("gri", "<u4"), ("tim", "<f8"), ("tid", "<i4"), ("vld", "?"), ("act", "?"),
              ("dos", "<i4"), ("sky", "<i4")]
#: processed pyMINFLUX columns -> (our export field, scale): both read them from the final iteration
PARITY = {"tid": ("tid", 1.0), "tim": ("tim", 1.0), "x": ("loc0", 1e9), "y": ("loc1", 1e9), "z": ("loc2", 1e9),
          "efo": ("efo", 1.0), "cfr": ("cfr", 1.0), "eco": ("eco", 1.0), "dcr": ("dcr", 1.0), "fbg": ("fbg", 1.0)}


def peer_python() -> Path:
    return common.peer_python(PEER_ENV, ".venv-pyminflux")


def peer_available() -> bool:
    return common.peer_available(PEER_ENV, ".venv-pyminflux", "pyminflux.reader, pyminflux.processor")


# --------------------------------------------------------------------------------------------
# peer side (pyMINFLUX virtualenv): numpy / pandas / pyminflux only
# --------------------------------------------------------------------------------------------

def peer_main(job_path: str, out_path: str) -> None:
    """Read the export with pyMINFLUX; per-trace means of the 2-on and 1-on parts (switch times given)."""
    import pyminflux
    from pyminflux.processor import MinFluxProcessor
    from pyminflux.reader import MinFluxReader

    job = np.load(job_path, allow_pickle=False)
    t0 = time.perf_counter()
    reader = MinFluxReader(str(job["export"]))
    df = reader.processed_dataframe
    t_read = time.perf_counter() - t0
    out = {f"col_{c}": df[c].to_numpy() for c in ("tid", "tim", "x", "y", "z", "efo", "cfr", "eco", "dcr", "fbg")}
    report = {"pyminflux": pyminflux.__version__, "read_s": t_read, "rows": int(len(df))}
    if "switch" in job.files:
        # switch: (traces, 4) tid, end of 2-on, end of 1-on (times, s), as the user would mark them
        t0 = time.perf_counter()
        sw = job["switch"]
        proc = MinFluxProcessor(reader)
        d = proc.filtered_dataframe
        row = np.searchsorted(sw[:, 0], d["tid"].to_numpy())
        tim = d["tim"].to_numpy()
        two = tim < sw[row, 1]
        one = (tim >= sw[row, 1]) & (tim < sw[row, 2])
        s2 = MinFluxProcessor.calculate_statistics_on(d[two])
        s1 = MinFluxProcessor.calculate_statistics_on(d[one])
        s = s2.merge(s1, on="tid", suffixes=("_2", "_1"))
        out["user_tid"] = s["tid"].to_numpy()
        out["user_d"] = 2.0 * np.hypot(s["mx_2"] - s["mx_1"], s["my_2"] - s["my_1"]).to_numpy()
        report["user_s"] = time.perf_counter() - t0
    out["report"] = np.array(json.dumps(report))
    np.savez(out_path, **out)


def peer_reads(export: Path, workdir: Path) -> str:
    """'yes', or pyMINFLUX's own message when MinFluxReader refuses the file."""
    try:
        run_peer(export, workdir)
        return "yes"
    except RuntimeError as exc:
        msg = [ln for ln in str(exc).splitlines() if ln.strip()]
        why = [ln for ln in msg if ln.startswith("Could not open")] or msg[-1:] or ["?"]
        return "no: " + why[0].split(": ", 1)[-1]


def run_peer(export: Path, workdir: Path, switch: np.ndarray | None = None) -> dict:
    job, out = workdir / "pyminflux_job.npz", workdir / "pyminflux_out.npz"
    extra = {} if switch is None else {"switch": switch}
    np.savez(job, export=np.array(str(export)), **extra)
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    r = subprocess.run([str(peer_python()), str(Path(__file__).resolve()), "--peer", str(job), str(out)],
                       env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"pyMINFLUX run failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    with np.load(out, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


# --------------------------------------------------------------------------------------------
# the export
# --------------------------------------------------------------------------------------------

def single_emitter_offset(counts: np.ndarray, half_l: np.ndarray | float) -> np.ndarray:
    """(n, 2) emitter position relative to the pattern centre from each axis' 3 counts (harmonic phase).

    n_k = A - B cos(K (x - p_k)) at p = -h, 0, +h is linear in (A, B cos Kx, B sin Kx); x = atan2 / K.
    For two emitters on at once this lands near their brightness-weighted midpoint.
    """
    c = np.asarray(counts, np.float64)
    h = np.broadcast_to(np.asarray(half_l, np.float64), c.shape[:2])
    ch, sh = np.cos(K_NM * h), np.sin(K_NM * h)
    S = (c[..., 0] - c[..., 2]) / (2.0 * sh)
    C = (c[..., 0] + c[..., 2] - 2.0 * c[..., 1]) / (2.0 * (1.0 - ch))
    return np.arctan2(S, C) / K_NM


def write_export(path: Path, counts: np.ndarray, centre_nm: np.ndarray, half_l_nm: float, tid: np.ndarray,
                 tim: np.ndarray, vld: np.ndarray, period_s: float = 1e-3, seed: int = 0) -> np.ndarray:
    """Imspector m2205 nested export of final-iteration localizations (+ an earlier iteration); returns it."""
    rng = np.random.default_rng(seed)
    n = len(counts)
    off = single_emitter_offset(counts, half_l_nm)
    loc = np.zeros((n, 3))
    loc[:, :2] = centre_nm + off
    arr = np.zeros(n, dtype=[("itr", ITR_FIELDS, (ITERS,))] + TOP_FIELDS)
    it = arr["itr"]
    it["itr"] = np.arange(ITERS)
    it["tic"] = (tim * 40e6).astype(np.uint64)[:, None]
    eco = counts.reshape(n, 6).sum(1)
    ecc = counts[:, :, 1].sum(1)
    last = ITERS - 1
    it["loc"][:, last] = loc * 1e-9
    it["lnc"][:, last] = loc * 1e-9
    it["loc"][:, 0] = (loc + rng.normal(0, 20, (n, 3)) * [1, 1, 0]) * 1e-9  # the coarse first iteration
    it["lnc"][:, 0] = it["loc"][:, 0]
    it["eco"][:, last], it["ecc"][:, last] = eco, ecc
    it["efo"][:, last], it["efc"][:, last] = eco / period_s, ecc / period_s
    it["eco"][:, 0], it["efo"][:, 0] = eco // 2, eco / 2 / period_s
    it["cfr"][:, 0] = -1.0  # not measured in the first iteration (constant: pyMINFLUX then uses the last)
    it["cfr"][:, last] = np.where(eco > 0, ecc / np.maximum(eco, 1), 0.0)
    it["dcr"][:, last] = rng.uniform(0.3, 0.7, n)
    it["ext"] = [2 * half_l_nm * 1e-9, 2 * half_l_nm * 1e-9, 0.0]
    it["lcx"][:, last], it["lcy"][:, last] = off[:, 0] * 1e-9, off[:, 1] * 1e-9
    it["fbg"][:, last] = rng.uniform(500, 2000, n)
    it["phe"][:, last] = counts.reshape(n, 6)
    arr["sqi"] = 1
    arr["gri"] = np.arange(n)
    arr["tim"], arr["tid"], arr["vld"] = tim, tid, vld
    save_export(path, arr)
    return arr


def save_export(path: Path, arr: np.ndarray, with_counts: bool = True) -> None:
    """``.mat`` (MATLAB struct ``itr`` of (N, iterations[, k]) arrays) or ``.npy``; optionally without ``phe``.

    pyMINFLUX 0.7.0 refuses an ``.npy`` export with any field beyond Imspector's standard ones ("no field
    of name phe"), while its ``.mat`` reader picks the standard fields and ignores the rest: the export
    both tools read in one piece is therefore the ``.mat``.
    """
    names = [n for n in arr["itr"].dtype.names if with_counts or n != "phe"]
    if Path(path).suffix == ".mat":
        from scipy.io import savemat

        savemat(path, {"itr": {n: arr["itr"][n] for n in names},
                       **{n: arr[n] for n in arr.dtype.names if n != "itr"}})
        return
    if not with_counts:
        top = [(n, arr.dtype[n]) for n in arr.dtype.names if n != "itr"]
        std = np.zeros(len(arr), dtype=[("itr", [f for f in ITR_FIELDS if f[0] in names], (ITERS,))] + top)
        for n in names:
            std["itr"][n] = arr["itr"][n]
        for n, _ in top:
            std[n] = arr[n]
        arr = std
    np.save(path, arr)


def simulate_export(path: Path, distances: tuple[float, ...], traces_per_distance: int, tuples: int, seed: int = 0):
    """Dynamic traces -> export; returns per-trace truth (tid, d) and switch times, and per-tuple state."""
    from streamer.modalities.minflux.simulate import DynamicParams, simulate_dynamic

    n_tr = len(distances) * traces_per_distance
    # one simulation per distance, so that every distance has exactly traces_per_distance traces
    parts = [simulate_dynamic(traces_per_distance, tuples, seed=seed + 7 * k,
                              params=DynamicParams(distances_nm=(float(d),)))
             for k, d in enumerate(distances)]
    cat = lambda f: np.concatenate([f(p) for p in parts])  # noqa: E731
    counts = cat(lambda p: p.tuples.counts)
    trace = cat(lambda p: p.tuples.trace_id) + np.repeat(np.arange(len(parts)) * traces_per_distance,
                                                         traces_per_distance * tuples)
    time_s = cat(lambda p: p.tuples.time_s)
    t = {k: cat(lambda p, k=k: p.truth[k]) for k in ("d_nm", "theta", "mid_nm", "state")}
    rng = np.random.default_rng(seed + 1)
    d_tr = t["d_nm"][::tuples]
    th = t["theta"]
    sep = np.stack([t["d_nm"] * np.cos(th), t["d_nm"] * np.sin(th)], axis=1)
    origin = rng.uniform(-2000, 2000, (n_tr, 2))[trace]       # emitter 1 (the survivor), absolute nm
    centre_abs = origin - (t["mid_nm"] - sep / 2)             # where the pattern centre was, absolute
    tid = (trace + 1).astype(np.int32)
    tim = trace * (tuples * 1e-3 + 1.0) + time_s               # one global, increasing clock
    state = t["state"]
    arr = write_export(path, counts.astype(np.int64), centre_abs, 15.0, tid, tim,
                       np.ones(len(tid), bool), seed=seed)
    ends = []
    for k in range(n_tr):
        m = trace == k
        s, tk = state[m], tim[m]
        ends.append([k + 1, tk[s == 2].max() + 1e-4, tk[s >= 1].max() + 1e-4])
    return {"tid": np.arange(1, n_tr + 1), "d": d_tr, "switch": np.asarray(ends), "state": state, "array": arr}


# --------------------------------------------------------------------------------------------
# ours + comparison
# --------------------------------------------------------------------------------------------

def parity(peer: dict, export_path: Path) -> dict[str, float]:
    """Max |difference| per field between pyMINFLUX's processed columns and our loader's final-iteration fields."""
    from streamer.modalities.minflux.loaders.abberior import read_export

    f = read_export(export_path).fields
    v = np.asarray(f["vld"]).astype(bool)
    ours = {k: np.asarray(val)[v] for k, val in f.items() if k != "loc"}
    loc = np.asarray(f["loc"])[v]
    ours.update(loc0=loc[:, 0], loc1=loc[:, 1], loc2=loc[:, 2])
    out = {}
    for col, (field, scale) in PARITY.items():
        a, b = np.asarray(peer[f"col_{col}"], np.float64), np.asarray(ours[field], np.float64) * scale
        out[col] = float(np.max(np.abs(a - b))) if len(a) == len(b) else float("inf")
    return out


def ours_per_trace(rec, packet: int = 10_000) -> tuple[dict[int, tuple[float, float, float]], float]:
    """LivePredictor over the recording in packets; last per-trace distance + interval, and seconds."""
    from streamer.modalities.minflux.live import LivePredictor

    lp = LivePredictor()
    b = rec.tuples
    res: dict[int, tuple[float, float, float]] = {}
    t0 = time.perf_counter()
    for s in range(0, len(b), packet):
        sl = slice(s, s + packet)
        out = lp.process("peer-bench", b[sl])
        tids = b.trace_id[sl]
        ok = np.isfinite(out["trace_distance"])
        for t_, d_, lo, hi in zip(tids[ok], out["trace_distance"][ok], out["trace_lower"][ok], out["trace_upper"][ok]):
            res[int(t_)] = (float(d_), float(lo), float(hi))
    return res, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--distances", default="10,15,20,30")
    ap.add_argument("--traces-per-distance", type=int, default=20)
    ap.add_argument("--tuples", type=int, default=4000, help="tuples per trace (1 ms each)")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args(argv)
    import tempfile
    from importlib.metadata import version

    from streamer.core.results_md import write_sections
    from streamer.modalities.minflux.loaders.abberior import load_abberior

    if not peer_available():
        print(f"pyMINFLUX interpreter {peer_python()} missing or cannot import pyminflux: see bench/peers/README.md",
              file=sys.stderr)
        return 2
    t_start = time.perf_counter()
    distances = tuple(float(x) for x in args.distances.split(","))
    with tempfile.TemporaryDirectory() as td:
        export = Path(td) / "export.mat"
        sim = simulate_export(export, distances, args.traces_per_distance, args.tuples, args.seed)
        size_mb = export.stat().st_size / 1e6
        t0 = time.perf_counter()
        rec, report = load_abberior(export)
        t_load = time.perf_counter() - t0
        peer = run_peer(export, Path(td), sim["switch"])
        par = parity(peer, export)
        # the same rows as .npy: with phe pyMINFLUX refuses it; the standard fields only: both read it
        arr = sim["array"]
        save_export(Path(td) / "with_phe.npy", arr)
        npy_with = peer_reads(Path(td) / "with_phe.npy", Path(td))
        save_export(Path(td) / "standard.npy", arr, with_counts=False)
        par_npy = parity(run_peer(Path(td) / "standard.npy", Path(td)), Path(td) / "standard.npy")
    prep = json.loads(str(peer["report"]))
    # our recording vs pyMINFLUX rows: same order, trace ids, times; beam centre + lc = pyMINFLUX x, y
    same_rows = len(rec) == prep["rows"]
    ours, t_ours = ours_per_trace(rec)
    # loader's tid are the export's tid (1-based); truth per tid
    user = dict(zip(peer["user_tid"].astype(int).tolist(), peer["user_d"].tolist()))
    rows = []
    for d in distances:
        tids = sim["tid"][sim["d"] == d]
        e_o = np.array([ours[t][0] - d for t in tids if t in ours])
        cov = np.mean([ours[t][1] <= d <= ours[t][2] for t in tids if t in ours]) if len(e_o) else np.nan
        e_u = np.array([user[t] - d for t in tids if t in user])
        rows.append({"d": d, "n": len(tids), "n_o": len(e_o), "bias_o": e_o.mean(), "rmse_o": np.sqrt(np.mean(e_o ** 2)),
                     "cov_o": cov, "n_u": len(e_u), "bias_u": e_u.mean(), "rmse_u": np.sqrt(np.mean(e_u ** 2))})
    n = len(rec)
    text = section(args, prep, version("minflux-streamer"), par, same_rows, report, rows, n, size_mb,
                   t_load, t_ours, time.perf_counter() - t_start, npy_with, par_npy)
    print(text)
    if args.write:
        write_sections(ROOT / "bench" / "RESULTS.md", {SECTION: text})
    return 0


def section(args, prep, our_version, par, same_rows, report, rows, n, size_mb, t_load, t_ours, elapsed,
            npy_with, par_npy) -> str:
    cmd = " ".join(["bench/peers/minflux_pyminflux.py"] + sys.argv[1:])
    lines = [SECTION, "",
             f"`.venv/bin/python {cmd}` (pyminflux {prep['pyminflux']} in `.venv-pyminflux`; minflux-streamer "
             f"{our_version}; {elapsed:.0f} s wall on the shared 2-core machine). One simulated Imspector m2205 "
             f"nested export, written as `.mat` ({n:,} localizations, {size_mb:.0f} MB, {ITERS} iterations, per-exposure counts "
             f"in `phe`), {args.traces_per_distance} dynamic traces per distance of {args.tuples} tuples "
             "(2-on -> 1-on -> background, ~200 photons, v0 = 1, L/2 = 15 nm).", "",
             "**Reading the same export.** pyMINFLUX `MinFluxReader` "
             f"{prep['rows']:,} valid rows in {prep['read_s']:.1f} s; our `load_abberior` {report['kept']:,} rows "
             f"in {t_load:.2f} s (same rows in the same order: {'yes' if same_rows else 'NO'}). Field parity, max "
             "|pyMINFLUX - ours| over all rows (ours: `read_export` final-iteration fields; x/y/z = loc in nm): "
             + ", ".join(f"{k} {v:.3g}" for k, v in par.items()) + ". Fields only we read: `phe` (per-exposure "
             "counts), `ext`, `lcx/lcy` (the beam positions our distance estimator needs). The same rows as `.npy`: "
             f"with `phe` pyMINFLUX opens it: {npy_with}; with the standard fields only both read it (our "
             "`read_export`; `load_abberior` then refuses it, saying the per-exposure counts are missing), "
             "parity " + ", ".join(f"{k} {v:.3g}" for k, v in par_npy.items()) + ".", "",
             "**Per-trace distance.** Ours: `LivePredictor` (general model, v0 and background self-calibrated "
             f"from the stream, per-trace pooled visibility with 90 % interval), {n / t_ours:,.0f} tuples/s on one "
             "core after loading. pyMINFLUX user: 2 x |mean loc of the 2-on part - mean loc of the 1-on part| "
             "per trace (pyMINFLUX's per-TID mx/my), given the true switch times (an oracle; a user marks them "
             f"by eye), {prep.get('user_s', float('nan')):.1f} s after reading.", "",
             "| d nm | traces | ours bias nm | ours RMSE nm | ours 90 % cover | pyMINFLUX-user bias nm | "
             "pyMINFLUX-user RMSE nm |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['d']:g} | {r['n']} (ours {r['n_o']}, user {r['n_u']}) | {r['bias_o']:+.2f} | "
                     f"{r['rmse_o']:.2f} | {100 * r['cov_o']:.0f} % | {r['bias_u']:+.2f} | {r['rmse_u']:.2f} |")
    wins = [f"d = {r['d']:g} nm (RMSE {r['rmse_u']:.2f} vs {r['rmse_o']:.2f})" for r in rows if r["rmse_u"] < r["rmse_o"]]
    lines += ["", "Where the pyMINFLUX-user estimate wins (lower RMSE): " + ("; ".join(wins) if wins else
                                                                           "nowhere in this run") + "."]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--peer":
        peer_main(sys.argv[2], sys.argv[3])
        sys.exit(0)
    sys.exit(main())
