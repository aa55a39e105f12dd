"""Results persisted as numbered ``.npz`` chunks (open, numpy-readable) with bounded memory.

``DIR/results-00000.npz``, ``results-00001.npz``, ... each holds up to ``chunk_tuples`` tuples:
  per tuple:  seq int64 (packet seq), row int32 (index in packet), stream uint16 (code),
              distance/lower/upper float32 nm, flags uint8, photons uint32, centre (n,2) float32 nm,
              trace_id int64 (-1 unknown), time_s float64 (NaN unknown)
  per packet: packet_stream uint16, packet_seq int64, packet_n int32, packet_model uint16,
              packet_t_acq / packet_t_done / packet_t_sink float64 (Unix s)
  meta:       JSON {"format": "minflux-results", "version": 1, "chunk": k, "streams": [...], "models": [...]}
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

from .. import schema
from ..schema import Result
from . import defaults

FORMAT = "minflux-results"
FORMAT_VERSION = 1


class ResultWriter:
    def __init__(self, directory: str | Path, chunk_tuples: int = defaults.CHUNK_TUPLES):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.chunk_tuples = chunk_tuples
        self.streams: list[str] = []
        self.models: list[str] = []
        self._parts: list[tuple[Result, float]] = []
        self._n = 0
        self.chunks = 0
        self.tuples = 0
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._thread = threading.Thread(target=self._drain, name="result-writer", daemon=True)
        self._thread.start()
        self._errors = open(self.dir / "errors.jsonl", "a")
        self._failure: BaseException | None = None

    def _code(self, table: list[str], name: str) -> int:
        if name not in table:
            table.append(name)
        return table.index(name)

    def add(self, res: Result, t_sink: float) -> None:
        if self._failure:
            raise RuntimeError(f"result writer failed: {self._failure}")
        self._code(self.streams, res.stream)
        self._code(self.models, res.model)
        self._parts.append((res, t_sink))
        self._n += res.n
        if self._n >= self.chunk_tuples:
            self.flush()

    def add_error(self, error: dict) -> None:
        self._errors.write(json.dumps(error) + "\n")
        self._errors.flush()

    def flush(self) -> None:
        if not self._parts:
            return
        parts, self._parts, self._n = self._parts, [], 0
        arrays = self._columns(parts)
        arrays["meta"] = np.array(json.dumps({"format": FORMAT, "version": FORMAT_VERSION, "schema": schema.VERSION,
                                              "chunk": self.chunks, "streams": list(self.streams),
                                              "models": list(self.models)}))
        self._queue.put((self.dir / f"results-{self.chunks:05d}.npz", arrays))
        self.chunks += 1
        self.tuples += len(arrays["seq"])

    def _columns(self, parts: list[tuple[Result, float]]) -> dict[str, np.ndarray]:
        res = [r for r, _ in parts]
        n = np.array([r.n for r in res], np.int32)
        cat = {k: np.concatenate([r.arrays[k] for r in res]) for k in ("distance", "lower", "upper", "flags",
                                                                        "photons", "centre")}
        def optional(key: str, fill, dtype) -> np.ndarray:
            return np.concatenate([r.arrays[key] if key in r.arrays else np.full(r.n, fill, dtype) for r in res])
        stream = np.array([self.streams.index(r.stream) for r in res], np.uint16)
        starts = np.repeat(np.cumsum(n) - n, n)
        return {
            "seq": np.repeat(np.array([r.seq for r in res], np.int64), n),
            "row": (np.arange(int(n.sum())) - starts).astype(np.int32),
            "stream": np.repeat(stream, n),
            **cat,
            "trace_id": optional("trace_id", -1, np.int64),
            "time_s": optional("time", np.nan, np.float64),
            "packet_stream": stream,
            "packet_seq": np.array([r.seq for r in res], np.int64),
            "packet_n": n,
            "packet_model": np.array([self.models.index(r.model) for r in res], np.uint16),
            "packet_t_acq": np.array([r.t_acq for r in res]),
            "packet_t_done": np.array([r.t_done for r in res]),
            "packet_t_sink": np.array([t for _, t in parts]),
        }

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


def load_results(directory: str | Path) -> dict[str, np.ndarray]:
    """All chunks of a results directory concatenated; ``stream`` / ``model`` decoded to names."""
    d = Path(directory)
    paths = sorted(d.glob("results-*.npz"))
    if not paths:
        raise FileNotFoundError(f"no results-*.npz chunks in {d}")
    chunks = []
    for p in paths:
        with np.load(p, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("format") != FORMAT or meta.get("version", 0) > FORMAT_VERSION:
                raise ValueError(f"{p}: not a {FORMAT} v{FORMAT_VERSION} chunk")
            c = {k: z[k] for k in z.files if k != "meta"}
            c["stream"] = np.asarray(meta["streams"], dtype=object)[c["stream"]]
            c["packet_stream"] = np.asarray(meta["streams"], dtype=object)[c["packet_stream"]]
            c["packet_model"] = np.asarray(meta["models"], dtype=object)[c["packet_model"]]
            chunks.append(c)
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
