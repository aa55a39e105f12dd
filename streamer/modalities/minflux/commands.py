"""MINFLUX's CLI hooks: ``streamer simulate|demo|run|publish|train|evaluate|estimate|convert|traces --modality minflux``."""

from __future__ import annotations

import argparse
import importlib

import numpy as np

#: verbs whose whole implementation is MINFLUX's (module under .verbs with HELP/add_arguments/run)
_VERB_MODULES = ("train", "evaluate", "estimate", "convert", "calibrate", "traces")


def _verb(name: str):
    return importlib.import_module(f"{__package__}.verbs.{name}")


class MinfluxCommands:
    verbs = {"estimate": "physics estimators (closed form, MLE) on a replay file vs ground truth",
             "convert": "recorded data (Hensel parsed.pkl, Abberior .npy/.mat) -> replay file",
             "traces": "per-trace distances of a results directory, merged over every worker's partial sums"}

    # ------------------------------------------------------------------ simulate (also demo/run/publish)
    def add_simulate_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--regime", choices=["static", "dynamic"], default="static",
                       help="static rulers or dynamic traces (also: --simulate static|dynamic)")
        p.add_argument("--traces", type=int, default=200, help="rulers (static) or traces (dynamic)")
        p.add_argument("--tuples-per-trace", type=int, default=None,
                       help="default: 500 static / 10000 dynamic (demo: 1000)")
        p.add_argument("--seed", type=int, default=None, help="default 0 (demo: 1)")
        p.add_argument("--v0", type=float, default=1.0, help="instrument single-emitter visibility")
        p.add_argument("--v0-jitter", type=float, default=0.0, help="per-ruler +- spread of v0")

    def _regime(self, args: argparse.Namespace) -> str:
        preset = getattr(args, "simulate", None)
        return preset if isinstance(preset, str) else args.regime

    def simulate(self, args: argparse.Namespace, demo: bool = False):
        from .simulate import InstrumentParams, simulate

        regime = self._regime(args)
        per = args.tuples_per_trace or (1000 if demo else (500 if regime == "static" else 10_000))
        seed = args.seed if args.seed is not None else (1 if demo else 0)
        rec = simulate(regime, args.traces, per, seed, instrument=InstrumentParams(v0=args.v0, v0_jitter=args.v0_jitter))
        return rec.to_core()

    def describe(self, rec) -> str:
        return (f"{len(rec):,} {rec.meta.get('regime', '')} tuples, mean "
                f"{rec.arrays['counts'].sum(axis=(1, 2)).mean():.0f} photons/tuple")

    def demo_predictor(self, args: argparse.Namespace) -> str:
        """The trained model of the simulated regime."""
        return self._regime(args)

    def report(self, rec, res: dict[str, np.ndarray], args: argparse.Namespace) -> tuple[str, bool]:
        """Accuracy of persisted results vs the simulator's truth, with the CRB on identical tuples."""
        from ...core.metrics import markdown_table, per_class_table
        from .crb import crb_for_recording

        packet_size = args.packet_size
        n = len(rec)
        idx = res["seq"] * packet_size + res["row"]
        complete = len(idx) == n and np.array_equal(idx, np.arange(n))
        lines = [f"output            {'every tuple exactly once, in order' if complete else 'INCOMPLETE'}"
                 f" ({len(idx):,} of {n:,} tuples persisted)"]
        truth = rec.truth
        two_on = truth["state"][idx] == 2 if "state" in truth else np.ones(len(idx), bool)
        d_true = truth["d_nm"][idx][two_on]
        d_hat = res["distance"][two_on].astype(np.float64)
        finite = np.isfinite(d_hat)
        lines.append(f"\naccuracy vs ground truth ({two_on.sum():,} two-emitter tuples, "
                     f"{(~finite).sum():,} without estimate):")
        crb = None
        if "amplitude" in truth:  # the physical limit on identical tuples, for scale
            sel = idx[two_on][finite]
            crb = crb_for_recording({k: v[sel] for k, v in truth.items()}, rec.arrays["positions"][sel])
        lines.append(markdown_table(per_class_table(d_true[finite], {args.predictor: d_hat[finite]}, crb)))
        lo, hi = res["lower"][two_on], res["upper"][two_on]
        has_iv = np.isfinite(lo) & np.isfinite(hi)
        if has_iv.any():
            covered = (lo[has_iv] <= d_true[has_iv]) & (d_true[has_iv] <= hi[has_iv])
            lines.append(f"interval coverage {covered.mean():.1%} (nominal 90%), mean width "
                         f"{np.mean(hi[has_iv] - lo[has_iv]):.2f} nm, {has_iv.mean():.0%} of tuples carry an interval")
        else:
            lines.append(f"intervals         none ({args.predictor} has no calibrated interval; "
                         "flags carry FLAG_NO_INTERVAL)")
        if "det_part_sums" in res and "trace_id" in rec.arrays:
            lines.append(self._trace_report(rec, res))
        return "\n".join(lines), complete

    @staticmethod
    def _trace_report(rec, res: dict[str, np.ndarray]) -> str:
        """Per-trace answers merged over every worker's persisted partial sums, vs the true distance."""
        from .verbs.traces import per_trace

        table = per_trace(res)
        tid, state, d = rec.arrays["trace_id"], rec.truth.get("state"), rec.truth["d_nm"]
        two = state == 2 if state is not None else np.ones(len(tid), bool)
        # the true distance of each trace (constant over its 2-on tuples in the simulation)
        truth = {int(t): float(np.median(d[two & (tid == t)])) for t in np.unique(tid[two])}
        d_true = np.array([truth.get(int(t), np.nan) for t in table["trace_id"]])
        err = table["distance"] - d_true
        has = np.isfinite(table["lower"]) & np.isfinite(d_true)
        cov = (table["lower"][has] <= d_true[has]) & (d_true[has] <= table["upper"][has])
        return (f"\nper trace, merged over all workers' partial sums ({len(table['trace_id'])} traces, median "
                f"{np.median(table['two_on_tuples']):,.0f} 2-on tuples; `streamer traces OUT` on the stored results): "
                f"mean error {np.nanmean(err):+.2f} nm, median |error| {np.nanmedian(np.abs(err)):.2f} nm, "
                f"90% interval covers the truth in {int(cov.sum())} of {int(has.sum())}; calibration v0 "
                f"{table['v0'][0]:.4f}, background {np.median(table['background']):.3f} counts/exposure (median over traces)")

    def load(self, path: str):
        """A replay file (generic or the earlier MINFLUX layout) in the generic form."""
        from .recording import load_recording

        return load_recording(path).to_core()

    def instrument_bench(self, workdir, quick: bool = False) -> dict:
        """bench/profiles.py: instrument A's models on B's data, then calibrate + train for B."""
        from .instrument_bench import run

        return run(workdir, quick)

    # ------------------------------------------------------------------ whole verbs
    def __getattr__(self, name: str):
        # add_<verb>_arguments / <verb> for the verbs implemented as modules in .verbs
        verb = name[4:-10] if name.startswith("add_") and name.endswith("_arguments") else name
        if verb in _VERB_MODULES:
            module = _verb(verb)
            return module.add_arguments if name != verb else module.run
        raise AttributeError(name)
