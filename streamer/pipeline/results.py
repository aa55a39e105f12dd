"""Read persisted results: the Parquet layout of :mod:`.store`, and the ``.npz`` chunks earlier versions wrote.

``load_results(DIR, modality)`` returns numpy columns: per item ``seq``, ``row``, ``stream`` and the
modality's item arrays; per detection ``det_seq``, ``det_item``, ``det_stream``, ``det_<name>``; per packet
``packet_seq``, ``packet_n``, ``packet_m``, ``packet_model``, ``packet_t_acq``, ``packet_t_done``,
``packet_t_sink`` (and ``packet_digest`` for Parquet). Old chunks: ``results-<modality>-00000.npz`` (v2)
and ``results-00000.npz`` (v1, MINFLUX).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..core.wire import LEGACY_MODALITY
from .store import concat_filled, load_parquet, parquet_modalities

LEGACY_FORMATS = ("streamer-results", "minflux-results")
NPZ_VERSION = 2


def result_modalities(directory: str | Path) -> list[str]:
    """Modalities with results in ``directory`` (either layout)."""
    return sorted(set(parquet_modalities(directory)) | set(_npz_modalities(directory)))


def load_results(directory: str | Path, modality: str | None = None) -> dict[str, np.ndarray]:
    """One modality's persisted results (``modality`` may be omitted when the directory holds one)."""
    d = Path(directory)
    present = result_modalities(d)
    if not present:
        raise FileNotFoundError(f"no results in {d}")
    if modality is None:
        if len(present) > 1:
            raise ValueError(f"{d} holds results of {present}: name the modality")
        modality = present[0]
    if modality in parquet_modalities(d):
        return load_parquet(d, modality)
    return _load_npz(d, modality)


def _npz_modalities(directory: str | Path) -> list[str]:
    """Modalities with result chunks in ``directory``."""
    found = set()
    for p in Path(directory).glob("results-*.npz"):
        stem = p.stem[len("results-"):]
        found.add(LEGACY_MODALITY if stem.isdigit() else stem.rsplit("-", 1)[0])
    return sorted(found)


def _load_npz(d: Path, modality: str) -> dict[str, np.ndarray]:
    """All ``.npz`` chunks of one modality concatenated; stream / model codes decoded to names."""
    present = _npz_modalities(d)
    paths = sorted(d.glob(f"results-{modality}-*.npz"))
    if modality == LEGACY_MODALITY:
        paths = sorted(p for p in d.glob("results-*.npz") if p.stem[len("results-"):].isdigit()) + paths
    if not paths:
        raise FileNotFoundError(f"no {modality} results in {d} (present: {present})")
    chunks = []
    for p in paths:
        with np.load(p, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("format") not in LEGACY_FORMATS or meta.get("version", 0) > NPZ_VERSION:
                raise ValueError(f"{p}: not a results chunk this version reads")
            c = {k: z[k] for k in z.files if k != "meta"}
        names = np.asarray(meta["streams"], dtype=object)
        for key in ("stream", "packet_stream", "det_stream"):
            if key in c:
                c[key] = names[c[key]]
        c["packet_model"] = np.asarray(meta["models"], dtype=object)[c["packet_model"]]
        chunks.append(c)
    # an optional array that no packet of one chunk carried is absent there: filled like the writer does
    return concat_filled(chunks, lambda k: "det_seq" if k.startswith("det_") else "seq")
