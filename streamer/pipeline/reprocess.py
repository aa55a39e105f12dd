"""Reprocess an archive or a replay file on ``dask.distributed`` with the same predictors as the live workers.

The input is cut into partitions of whole packets (a raw archive by its index: stream, seq ranges;
a replay file by packet ranges). Each Dask task reads its own packets from the shared path, runs
exactly the live worker's code on them (:func:`streamer.pipeline.worker.handle`: decode and validate
by declaration, predict, encode the result) and writes the live sink's Parquet layout
(:func:`streamer.pipeline.store.write_parts`) under a name fixed by the partition, atomically: a task
re-run after a worker died replaces its files instead of adding rows. Predictors (and their compiled
libraries, built or loaded from the content-hash cache on each worker host) are created once per
worker process, never shipped as pickles of ctypes handles. Within a partition the first valid packet
of a (stream, seq) wins, as in the sink.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core import wire
from ..core.recording import packet_slices
from .archive import _LEN
from .worker import Served, handle

_SERVED: dict[tuple, Served] = {}  # per worker process: loaded predictors, keyed by what they serve


@dataclass(frozen=True)
class Part:
    """One task: where its packets are and how to name its output."""

    index: int
    source: str  # "archive" or "replay"
    path: str
    records: tuple = ()  # archive: ((log file, offset, length), ...)
    start: int = 0  # replay: packet range [start, stop)
    stop: int = 0
    packet_size: int = 1000
    stream: str = "replay"


def archive_parts(directory: str | Path, packets_per_part: int) -> list[Part]:
    """Partitions of an archive by (stream, seq): every copy of a seq lands in the same partition."""
    rows = []
    for idx in sorted(Path(directory).glob("archive-*.idx.jsonl")):
        log = str(idx).replace(".idx.jsonl", ".log")
        size = Path(log).stat().st_size
        for line in idx.read_text().splitlines():
            try:
                offset, length, stream, seq, _modality = json.loads(line)
            except ValueError:
                continue  # a torn last index line
            if offset + _LEN.size + length <= size:
                rows.append((str(stream), seq if isinstance(seq, int) else -1, log, offset, length))
    if not rows:
        raise FileNotFoundError(f"no archived packets in {directory}")
    rows.sort(key=lambda r: (r[0], r[1]))
    parts, current, last_key = [], [], None
    for stream, seq, log, offset, length in rows:
        if len(current) >= packets_per_part and (stream, seq) != last_key:
            parts.append(current)
            current = []
        current.append((log, offset, length))
        last_key = (stream, seq)
    parts.append(current)
    return [Part(i, "archive", str(directory), tuple(p)) for i, p in enumerate(parts)]


def replay_parts(path: str | Path, n_items: int, packet_size: int, packets_per_part: int,
                 stream: str = "replay") -> list[Part]:
    n_packets = len(list(packet_slices(n_items, packet_size)))
    return [Part(i, "replay", str(path), start=a, stop=min(a + packets_per_part, n_packets),
                 packet_size=packet_size, stream=stream)
            for i, a in enumerate(range(0, n_packets, packets_per_part))]


def _packets(part: Part, load) -> list[bytes]:
    if part.source == "archive":
        out, handles = [], {}
        try:
            for log, offset, length in part.records:
                fh = handles.get(log) or handles.setdefault(log, open(log, "rb"))
                fh.seek(offset + _LEN.size)
                out.append(fh.read(length))
        finally:
            for fh in handles.values():
                fh.close()
        return out
    from ..core import registry

    rec = load(part.path)
    spec = registry.get(rec.modality).packet_kind(rec.kind)
    slices = list(packet_slices(len(rec), part.packet_size))
    return [wire.encode_packet(rec.modality, rec.kind, part.stream, seq, {**rec.header, spec.item_key: sl.stop - sl.start},
                               {k: v[sl] for k, v in rec.arrays.items()}, spec)
            for seq, sl in zip(range(part.start, part.stop), slices[part.start:part.stop])]


def warm(serves: dict[str, str]) -> str:
    """Load the predictors (and build/load their compiled libraries) in this worker process, once."""
    key = tuple(sorted(serves.items()))
    if key not in _SERVED:
        _SERVED[key] = Served(serves)
    return _SERVED[key].model_ids()


def run_part(part: Part, serves: dict[str, str], out_dir: str, load=None) -> dict[str, Any]:
    """One Dask task: the live worker's code over the partition's packets; Parquet out; a summary back."""
    from .store import write_parts

    warm(serves)
    served = _SERVED[tuple(sorted(serves.items()))]
    groups: dict[tuple[str, str], dict[int, tuple]] = {}
    errors, rejected = [], {}
    for raw in _packets(part, load):
        status, payload = handle(served, raw, None, f"reprocess-{part.index}")
        if status == b"DONE":
            res = wire.decode_result(payload)
            seqs = groups.setdefault((res.modality, res.stream), {})
            if res.seq not in seqs:  # first valid packet of a seq wins, as in the sink
                seqs[res.seq] = (res, time.time(), wire.content_digest(wire.unpack(raw)))
        else:
            err = wire.unpack(payload)
            rejected[err["reason"]] = rejected.get(err["reason"], 0) + 1
            errors.append(err)
    items = 0
    for (modality, stream), seqs in groups.items():
        parts = [seqs[s] for s in sorted(seqs)]
        write_parts(Path(out_dir), modality, stream, parts, f"part{part.index:06d}")
        items += sum(r.n for r, _, _ in parts)
    return {"part": part.index, "items": items, "packets": sum(len(v) for v in groups.values()),
            "rejected_by_reason": rejected, "errors": errors[:100]}


def load_replay(path: str):
    """A replay file in generic form (a modality with its own older layout reads that too)."""
    from ..core import registry
    from ..core.recording import load_recording, read_meta

    name = read_meta(path).get("modality", "minflux")
    cmds = registry.get(name).commands if registry.known(name) else None
    return cmds.load(path) if hasattr(cmds, "load") else load_recording(path)


def reprocess(source: str | Path, out: str | Path, predictors: list[str] | None = None, *,
              default_modality: str = "minflux", scheduler: str | None = None, workers: int = 2,
              packets_per_task: int = 64, packet_size: int = 1000, stream: str = "replay", progress: bool = False,
              on_first_result=None) -> dict[str, Any]:
    """Run every partition of ``source`` on Dask; returns a summary. ``on_first_result(client)`` is
    called once the first task finished (failure injection in tests)."""
    from dask.distributed import Client, LocalCluster, as_completed

    from ..core import registry
    from .worker import parse_serves

    src = Path(source)
    if src.is_dir():
        parts = archive_parts(src, packets_per_task)
        modalities = {json.loads(line)[4] for idx in src.glob("*.idx.jsonl") for line in idx.read_text().splitlines()}
    else:
        rec = load_replay(str(src))
        parts = replay_parts(src, len(rec), packet_size, packets_per_task, stream)
        modalities = {rec.modality}
    specs = predictors or [f"{m}:" for m in sorted(modalities) if registry.known(m)]
    serves = parse_serves(specs, default_modality=default_modality)
    Path(out).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cluster = None if scheduler else LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                   dashboard_address=None)
    done = []
    try:
        with Client(scheduler or cluster) as client:
            if cluster is not None:
                client.wait_for_workers(workers)
            client.run(warm, serves)  # model loading is start-up, not throughput
            t_compute = time.perf_counter()
            futures = [client.submit(run_part, part, serves, str(out), load_replay, key=f"reprocess-{part.index}-{t0}",
                                     retries=3) for part in parts]
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=len(futures), unit="task")
            for fut in as_completed(futures):
                done.append(fut.result())
                if len(done) == 1 and on_first_result is not None:
                    on_first_result(client)
                if bar:
                    bar.update(1)
            if bar:
                bar.close()
    finally:
        if cluster is not None:
            cluster.close()
    rejected: dict[str, int] = {}
    with open(Path(out) / "errors.jsonl", "w") as fh:
        for d in sorted(done, key=lambda d: d["part"]):
            for k, v in d["rejected_by_reason"].items():
                rejected[k] = rejected.get(k, 0) + v
            for e in d["errors"]:
                fh.write(json.dumps(e, default=str) + "\n")
    return {"items": sum(d["items"] for d in done), "packets": sum(d["packets"] for d in done), "tasks": len(parts),
            "serves": [f"{m}:{p}" for m, p in serves.items()], "wall_s": time.perf_counter() - t0,
            "compute_s": time.perf_counter() - t_compute,
            "rejected_by_reason": rejected}
