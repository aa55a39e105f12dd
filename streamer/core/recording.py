"""Replay files of any modality: one ``.npz`` (open, numpy-readable) holding a modality's packet arrays.

Layout: ``a_<name>`` item-major packet arrays (first axis = items: tuples, frames, stacks);
``truth_<name>`` optional ground truth (free-form; per-item truth has the item axis first, per-emitter
truth carries an ``item`` column); ``meta`` JSON text with ``format``, ``version``, ``modality``,
``kind``, ``header`` (the scalar header fields every packet of this recording carries) and free-form
parameters. Replay cuts the item axis into packets (:func:`packet_messages`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

FORMAT = "streamer-replay"
FORMAT_VERSION = 1


@dataclass
class Recording:
    """Packet arrays of one modality and kind, plus ground truth and metadata."""

    modality: str
    kind: str
    arrays: dict[str, np.ndarray]
    header: dict[str, Any] = field(default_factory=dict)
    truth: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values()))) if self.arrays else 0

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        out = {f"a_{k}": np.ascontiguousarray(v) for k, v in self.arrays.items()}
        out.update({f"truth_{k}": np.asarray(v) for k, v in self.truth.items()})
        out["meta"] = np.array(json.dumps({**self.meta, "format": FORMAT, "version": FORMAT_VERSION,
                                           "modality": self.modality, "kind": self.kind,
                                           "header": self.header}))
        with open(path, "wb") as fh:  # a file handle keeps numpy from appending ".npz"
            np.savez(fh, **out)
        return path


def read_meta(path: str | Path) -> dict:
    """The ``meta`` JSON of any ``.npz`` replay file (clear error for anything else)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            if "meta" not in z.files:
                raise ValueError(f"{path}: no 'meta' entry: not a replay recording")
            return json.loads(str(z["meta"]))
    except (OSError, ValueError) as exc:
        if isinstance(exc, ValueError) and str(exc).startswith(str(path)):
            raise
        raise ValueError(f"{path}: not a replay recording (.npz): {exc}") from exc


def load_recording(path: str | Path) -> Recording:
    """Read a file written by :meth:`Recording.save`."""
    path = Path(path)
    meta = read_meta(path)
    if meta.get("format") != FORMAT or meta.get("version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported replay format {meta.get('format')} v{meta.get('version')}")
    with np.load(path, allow_pickle=False) as z:
        arrays = {k[2:]: z[k] for k in z.files if k.startswith("a_")}
        truth = {k[6:]: z[k] for k in z.files if k.startswith("truth_")}
    lengths = {len(v) for v in arrays.values()}
    if len(lengths) > 1:
        raise ValueError(f"{path}: packet arrays disagree on the item count: {sorted(lengths)}")
    modality, kind, header = meta.pop("modality"), meta.pop("kind"), meta.pop("header", {})
    return Recording(modality, kind, arrays, header, truth, meta)


def packet_slices(n_items: int, packet_size: int) -> Iterator[slice]:
    """Item ranges of consecutive packets: packet k holds items [k*size, (k+1)*size)."""
    if packet_size < 1:
        raise ValueError("packet size must be >= 1")
    for start in range(0, n_items, packet_size):
        yield slice(start, min(start + packet_size, n_items))
