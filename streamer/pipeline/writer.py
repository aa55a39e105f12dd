"""Results persisted as numbered ``.npz`` chunks per modality (open, numpy-readable), bounded memory.

``DIR/results-<modality>-00000.npz``, ... each holds up to ``chunk_items`` items of one modality.
Columns come from the result messages' own ``layout`` (whatever arrays the modality declares):
  per item:      seq int64 (packet seq), row int32 (index in packet), stream uint16 (code), <item arrays>
  per detection: det_seq int64, det_stream uint16, det_item int32 (row of its item), det_<detection arrays>
  per packet:    packet_stream uint16, packet_seq int64, packet_n int32, packet_m int32, packet_model uint16,
                 packet_t_acq / packet_t_done / packet_t_sink float64 (Unix s)
  meta:          JSON {"format", "version", "modality", "chunk", "streams", "models", "layout"}
An optional array absent from some packets is filled (NaN for floats, -1 for signed, 0 for unsigned).
Codes index the ``streams`` / ``models`` lists of the same chunk's meta. Chunks are written by a
background thread through a queue of 2, so a slow disk back-pressures the sink instead of growing memory.
Rejected packets go to ``errors.jsonl`` (one JSON object per line, the error message's fields).
"""

from __future__ import annotations

import json
import queue
import threading
from pathlib import Path

import numpy as np

from ..core.wire import LEGACY_MODALITY, Result
from . import defaults

FORMAT = "streamer-results"
LEGACY_FORMAT = "minflux-results"  # v1 chunks (results-00000.npz) written before modalities existed
FORMAT_VERSION = 2


def _fill(dtype: np.dtype):
    return np.nan if dtype.kind in "fc" else (-1 if dtype.kind == "i" else 0)


class _Buffer:
    """Results of one modality waiting for the next chunk."""

    def __init__(self) -> None:
        self.parts: list[tuple[Result, float]] = []
        self.items = 0
        self.layout: dict[str, tuple[np.dtype, tuple[int, ...], str]] = {}
        self.chunks = 0


class ResultWriter:
    def __init__(self, directory: str | Path, chunk_items: int = defaults.CHUNK_TUPLES):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.chunk_items = chunk_items
        self.streams: list[str] = []
        self.models: list[str] = []
        self._buffers: dict[str, _Buffer] = {}
        self.chunks = 0
        self.items = 0
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._thread = threading.Thread(target=self._drain, name="result-writer", daemon=True)
        self._thread.start()
        self._errors = open(self.dir / "errors.jsonl", "a")
        self._failure: BaseException | None = None

    @staticmethod
    def _code(table: list[str], name: str) -> int:
        if name not in table:
            table.append(name)
        return table.index(name)

    def add(self, res: Result, t_sink: float) -> None:
        if self._failure:
            raise RuntimeError(f"result writer failed: {self._failure}")
        self._code(self.streams, res.stream)
        self._code(self.models, res.model)
        buf = self._buffers.setdefault(res.modality, _Buffer())
        for axis, table in (("n", res.items), ("m", res.detections)):
            for k, v in table.items():
                buf.layout.setdefault(k, (v.dtype, v.shape[1:], axis))
        buf.parts.append((res, t_sink))
        buf.items += res.n + (res.m or 0)
        if buf.items >= self.chunk_items:
            self._flush(res.modality)

    def add_error(self, error: dict) -> None:
        self._errors.write(json.dumps(error, default=str) + "\n")
        self._errors.flush()

    def flush(self) -> None:
        for modality in list(self._buffers):
            self._flush(modality)

    def _flush(self, modality: str) -> None:
        buf = self._buffers[modality]
        if not buf.parts:
            return
        parts, buf.parts, buf.items = buf.parts, [], 0
        arrays = self._columns(parts, buf.layout)
        arrays["meta"] = np.array(json.dumps({
            "format": FORMAT, "version": FORMAT_VERSION, "modality": modality, "chunk": buf.chunks,
            "streams": list(self.streams), "models": list(self.models),
            "layout": {k: [d.str, list(s), a] for k, (d, s, a) in buf.layout.items()}}))
        self._queue.put((self.dir / f"results-{modality}-{buf.chunks:05d}.npz", arrays))
        buf.chunks += 1
        self.chunks += 1
        self.items += len(arrays["seq"])

    def _columns(self, parts: list[tuple[Result, float]], layout: dict) -> dict[str, np.ndarray]:
        res = [r for r, _ in parts]
        n = np.array([r.n for r in res], np.int32)
        m = np.array([r.m or 0 for r in res], np.int32)
        seq = np.array([r.seq for r in res], np.int64)
        stream = np.array([self.streams.index(r.stream) for r in res], np.uint16)
        out = {
            "seq": np.repeat(seq, n),
            "row": (np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)).astype(np.int32),
            "stream": np.repeat(stream, n),
        }
        for k, (dtype, tail, axis) in layout.items():
            table, rows = ("items", n) if axis == "n" else ("detections", m)
            cols = [getattr(r, table).get(k) for r in res]
            col = np.concatenate([c if c is not None else np.full((rows[i], *tail), _fill(dtype), dtype)
                                  for i, c in enumerate(cols)])
            out[k if axis == "n" else f"det_{k}"] = col
        if m.any() or any(a == "m" for _, _, a in layout.values()):
            out["det_seq"] = np.repeat(seq, m)
            out["det_stream"] = np.repeat(stream, m)
        out.update({
            "packet_stream": stream, "packet_seq": seq, "packet_n": n, "packet_m": m,
            "packet_model": np.array([self.models.index(r.model) for r in res], np.uint16),
            "packet_t_acq": np.array([r.t_acq for r in res]),
            "packet_t_done": np.array([r.t_done for r in res]),
            "packet_t_sink": np.array([t for _, t in parts]),
        })
        return out

    def _drain(self) -> None:
        while (item := self._queue.get()) is not None:
            path, arrays = item
            try:
                tmp = path.with_suffix(".tmp")
                with open(tmp, "wb") as fh:
                    np.savez(fh, **arrays)
                tmp.rename(path)  # readers never see a half-written chunk
            except BaseException as exc:  # reported on the next add()
                self._failure = exc

    def close(self) -> None:
        self.flush()
        self._queue.put(None)
        self._thread.join()
        self._errors.close()
        if self._failure:
            raise RuntimeError(f"result writer failed: {self._failure}")


def result_modalities(directory: str | Path) -> list[str]:
    """Modalities with result chunks in ``directory``."""
    found = set()
    for p in Path(directory).glob("results-*.npz"):
        stem = p.stem[len("results-"):]
        found.add(LEGACY_MODALITY if stem.isdigit() else stem.rsplit("-", 1)[0])
    return sorted(found)


def load_results(directory: str | Path, modality: str | None = None) -> dict[str, np.ndarray]:
    """All chunks of one modality concatenated; ``stream`` / ``model`` codes decoded to names.

    ``modality`` may be omitted when the directory holds one. Legacy v1 chunks read as MINFLUX.
    """
    d = Path(directory)
    present = result_modalities(d)
    if not present:
        raise FileNotFoundError(f"no results-*.npz chunks in {d}")
    if modality is None:
        if len(present) > 1:
            raise ValueError(f"{d} holds results of {present}: name the modality")
        modality = present[0]
    paths = sorted(d.glob(f"results-{modality}-*.npz"))
    if modality == LEGACY_MODALITY:
        paths = sorted(p for p in d.glob("results-*.npz") if p.stem[len("results-"):].isdigit()) + paths
    if not paths:
        raise FileNotFoundError(f"no {modality} results in {d} (present: {present})")
    chunks = []
    for p in paths:
        with np.load(p, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("format") not in (FORMAT, LEGACY_FORMAT) or meta.get("version", 0) > FORMAT_VERSION:
                raise ValueError(f"{p}: not a {FORMAT} v{FORMAT_VERSION} chunk")
            c = {k: z[k] for k in z.files if k != "meta"}
        names = np.asarray(meta["streams"], dtype=object)
        for key in ("stream", "packet_stream", "det_stream"):
            if key in c:
                c[key] = names[c[key]]
        c["packet_model"] = np.asarray(meta["models"], dtype=object)[c["packet_model"]]
        chunks.append(c)
    # an optional array that no packet of one chunk carried is absent there: fill it like the writer does
    for k in set().union(*chunks):
        ref = next(c[k] for c in chunks if k in c)
        for c in chunks:
            if k not in c:
                rows = len(c["det_seq"] if k.startswith("det_") and "det_seq" in c else c["seq"])
                c[k] = np.full((rows, *ref.shape[1:]), _fill(ref.dtype), ref.dtype)
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
