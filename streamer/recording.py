"""Recorded-acquisition files for replay: an ``.npz`` archive (open, numpy-readable).

Layout (all arrays have n rows):
  counts (n,2,3) uint16 | positions (n,2,3) float32 nm | trace_id (n,) int64 | time_s (n,) float64
  truth_<name> optional ground truth from the simulator (d_nm, state, theta, amplitude, mid_nm,
  background, v0, g2, ...) | meta: JSON text with format version, regime, seed and parameters.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .tuples import TupleBatch

FORMAT = "minflux-replay"
FORMAT_VERSION = 1


@dataclass
class Recording:
    """A batch of tuples plus optional ground truth and free-form metadata."""

    tuples: TupleBatch
    truth: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.tuples)

    def subset(self, idx) -> "Recording":
        """Rows ``idx`` (mask or indices) with their ground truth."""
        return Recording(self.tuples[idx], {k: v[idx] for k, v in self.truth.items()}, dict(self.meta))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {
            "counts": np.ascontiguousarray(self.tuples.counts, np.uint16),
            "positions": np.ascontiguousarray(self.tuples.positions, np.float32),
            "trace_id": self.tuples.trace_id,
            "time_s": self.tuples.time_s,
            "meta": np.array(json.dumps({"format": FORMAT, "version": FORMAT_VERSION, **self.meta})),
        }
        arrays.update({f"truth_{k}": v for k, v in self.truth.items()})
        with open(path, "wb") as fh:  # a file handle keeps numpy from appending ".npz"
            np.savez(fh, **arrays)
        return path


def load_recording(path: str | Path) -> Recording:
    """Read a replay file written by :meth:`Recording.save`; clear errors for anything else."""
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a replay recording (.npz): {exc}") from exc
    with archive:
        missing = {"counts", "positions", "meta"} - set(archive.files)
        if missing:
            raise ValueError(f"{path}: replay recording lacks {sorted(missing)}")
        meta = json.loads(str(archive["meta"]))
        if meta.get("format") != FORMAT or meta.get("version", 0) > FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported format {meta.get('format')} v{meta.get('version')}")
        counts = archive["counts"]
        if counts.ndim != 3 or counts.shape[1:] != (2, 3):
            raise ValueError(f"{path}: counts must be (n, 2, 3), got {counts.shape}")
        tuples = TupleBatch.build(
            counts.astype(np.uint16, copy=False),
            archive["positions"].astype(np.float32, copy=False),
            archive["trace_id"] if "trace_id" in archive.files else None,
            archive["time_s"] if "time_s" in archive.files else None,
        )
        truth = {k[len("truth_"):]: archive[k] for k in archive.files if k.startswith("truth_")}
    return Recording(tuples, truth, meta)
