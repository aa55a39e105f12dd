"""Persisted results across layouts, `streamer results`, and the raw archive."""

from __future__ import annotations

import numpy as np

from streamer.cli import main
from streamer.core import wire
from streamer.modalities.minflux import wire as mwire
from streamer.modalities.minflux.simulate import simulate
from streamer.pipeline.archive import read_archive
from streamer.pipeline.launcher import run_local_pipeline
from streamer.pipeline.results import load_results


def test_archive_keeps_every_accepted_packet_and_results_command_summarizes(tmp_path, capsys):
    rec = simulate("static", 10, 100, seed=2)
    out, arch = tmp_path / "out", tmp_path / "archive"
    run_local_pipeline(rec, workers=1, predictor="minflux:closed-form", packet_size=100, out_dir=str(out),
                       sink_args=["--archive", str(arch)])
    packets = [mwire.decode_packet(raw) for raw in read_archive(arch)]
    assert [p.seq for p in packets] == list(range(10))
    np.testing.assert_array_equal(np.concatenate([p.batch.counts for p in packets]), rec.tuples.counts)
    assert main(["results", str(out), "--only", "minflux", "--csv", str(tmp_path / "t.csv")]) == 0
    text = capsys.readouterr().out
    assert "minflux: 1,000 items in 10 packets" in text and "stream 'replay': packets 10" in text
    assert len((tmp_path / "t.csv").read_text().splitlines()) == 1001


def test_torn_archive_tail_is_skipped(tmp_path):
    from streamer.pipeline.archive import RawArchive

    a = RawArchive(tmp_path)
    for seq in range(3):
        a.append(wire.encode_end("s", seq), "s", seq, "minflux")
    a.close()
    log = next(tmp_path.glob("*.log"))
    log.write_bytes(log.read_bytes()[:-5])  # a crash mid-record
    assert [wire.unpack(r)["seq"] for r in read_archive(tmp_path)] == [0, 1]


def test_legacy_npz_chunks_still_load(tmp_path):
    """Results written by the first release (results-00000.npz, format minflux-results v1)."""
    import json

    meta = {"format": "minflux-results", "version": 1, "chunk": 0, "streams": ["s"], "models": ["m"]}
    np.savez(tmp_path / "results-00000.npz", seq=np.zeros(2, np.int64), row=np.arange(2, dtype=np.int32),
             stream=np.zeros(2, np.uint16), distance=np.ones(2, np.float32), packet_stream=np.zeros(1, np.uint16),
             packet_seq=np.zeros(1, np.int64), packet_model=np.zeros(1, np.uint16), meta=np.array(json.dumps(meta)))
    res = load_results(tmp_path)
    assert res["distance"].tolist() == [1.0, 1.0] and res["stream"].tolist() == ["s", "s"]


def test_parquet_float_columns_are_byte_stream_split_and_round_trip(tmp_path):
    """Float result columns (also nested ones) are written BYTE_STREAM_SPLIT; reading gives back
    exactly what was written, NaN included."""
    import pyarrow.parquet as pq

    from streamer.pipeline.store import load_parquet, write_parts

    rng = np.random.default_rng(1)
    parts = []
    for seq in range(3):
        n = 5 + seq
        items = {"distance": rng.normal(20, 5, n).astype(np.float32), "flags": np.arange(n, dtype=np.uint8),
                 "centre": rng.normal(0, 1, (n, 2)).astype(np.float32), "time": np.linspace(0, 1, n)}
        items["distance"][0] = np.nan
        parts.append((wire.Result("minflux", "s", seq, n, None, 1.0, 2.0, "m", items, {}), 3.0, bytes(16)))
    write_parts(tmp_path, "minflux", "s", parts, "t")
    (path,) = tmp_path.glob("**/items-*.parquet")
    meta = pq.ParquetFile(path).metadata.row_group(0)
    enc = {meta.column(i).path_in_schema: meta.column(i).encodings for i in range(meta.num_columns)}
    for col in ("distance", "time", "centre.list.element"):
        assert "BYTE_STREAM_SPLIT" in enc[col], enc
    assert "BYTE_STREAM_SPLIT" not in enc["flags"] and "BYTE_STREAM_SPLIT" not in enc["seq"]
    got = load_parquet(tmp_path, "minflux")
    for k in ("distance", "flags", "centre", "time"):
        want = np.concatenate([p[0].items[k] for p in parts])
        np.testing.assert_array_equal(got[k], want)
