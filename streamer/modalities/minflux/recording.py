"""MINFLUX acquisitions in memory (:class:`Recording` of a :class:`TupleBatch`) and on disk.

Files are the generic replay format (:mod:`streamer.core.recording`, modality ``minflux``, kind
``tuples``): packet arrays counts (n,2,3) <u2, positions (n,2,3) <f4 nm, and trace_id (n,) <i8 /
time (n,) <f8 s when known; truth_<name> optional simulator ground truth (d_nm, state, theta,
amplitude, mid_nm, background, v0, g2, ...); meta with regime, seed and parameters. Files of the
earlier MINFLUX-only layout (format ``minflux-replay``) still load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...core import recording as core_recording
from .tuples import TupleBatch

FORMAT = "minflux-replay"  # the earlier layout, read only
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

    def to_core(self) -> core_recording.Recording:
        """The generic replay form (what the pipeline's replay and the file format use)."""
        t = self.tuples
        arrays = {"counts": np.ascontiguousarray(t.counts, np.uint16),
                  "positions": np.ascontiguousarray(t.positions, np.float32)}
        if (t.trace_id != -1).any():
            arrays["trace_id"] = t.trace_id
        if not np.isnan(t.time_s).all():
            arrays["time"] = t.time_s
        return core_recording.Recording("minflux", "tuples", arrays, {}, dict(self.truth), dict(self.meta))

    @classmethod
    def from_core(cls, rec: core_recording.Recording) -> "Recording":
        if rec.modality != "minflux" or rec.kind != "tuples":
            raise ValueError(f"a {rec.modality}/{rec.kind} recording is not MINFLUX tuples")
        a = rec.arrays
        tuples = TupleBatch.build(a["counts"].astype(np.uint16, copy=False), a["positions"].astype(np.float32, copy=False),
                                  a.get("trace_id"), a.get("time"))
        return cls(tuples, dict(rec.truth), dict(rec.meta))

    def save(self, path: str | Path) -> Path:
        return self.to_core().save(path)


def load_recording(path: str | Path) -> Recording:
    """Read a MINFLUX replay file (generic format, or the earlier ``minflux-replay`` layout)."""
    path = Path(path)
    meta = core_recording.read_meta(path)
    if meta.get("format") == core_recording.FORMAT:
        return Recording.from_core(core_recording.load_recording(path))
    if meta.get("format") != FORMAT or meta.get("version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported format {meta.get('format')} v{meta.get('version')}")
    with np.load(path, allow_pickle=False) as archive:
        missing = {"counts", "positions"} - set(archive.files)
        if missing:
            raise ValueError(f"{path}: replay recording lacks {sorted(missing)}")
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
