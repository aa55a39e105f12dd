"""Hensel et al. parsed.pkl -> replay recording: ordering, completeness, units, state files, errors."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from streamer.cli import main
from streamer.modalities.minflux.loaders import load_any, load_with_report
from streamer.modalities.minflux.loaders.hensel import load_hensel, nominal_distance_from_path
from streamer.modalities.minflux.recording import load_recording
from streamer.modalities.minflux.simulate import simulate_static


def hensel_frame(counts, positions, traces, experiment_id="mf_2023-01-01_a", gt=20, batch=1.0,
                 tuple_offset=0):
    """Long frame in the layout of the authors' ``_transform_otto``: all x rows, then all y rows,
    each tuple's exposures listed at descending pos (xM+L/2, xM, xM-L/2), photons as floats."""
    n = len(counts)
    rows = []
    for axis in (0, 1):
        p = positions[:, axis, ::-1].reshape(-1)
        c = counts[:, axis, ::-1].reshape(-1).astype(float)
        rows.append(pd.DataFrame({
            "pos": p.astype(np.float64), "photons": c, "gt": np.full(3 * n, gt, float),
            "batch": np.full(3 * n, batch), "axis": np.full(3 * n, axis),
            "tuple": np.repeat(np.arange(n) + tuple_offset, 3), "trace": np.repeat(traces, 3),
        }))
    df = pd.concat(rows, ignore_index=True)
    df["experiment_id"] = experiment_id
    return df


@pytest.fixture
def sim():
    rec = simulate_static(4, 25, seed=11)
    return rec.tuples.counts, rec.tuples.positions.astype(np.float64), rec.tuples.trace_id


def write(df, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_pickle(path)
    return path


def test_roundtrip_sorted_complete_and_incomplete_dropped(tmp_path, sim):
    counts, positions, traces = sim
    df = hensel_frame(counts, positions, traces)
    # make 3 tuples incomplete: a missing x exposure, all y missing, a 4th y exposure
    df = df.drop(df.index[(df["tuple"] == 5) & (df["axis"] == 0)][:1])
    df = df.drop(df.index[(df["tuple"] == 7) & (df["axis"] == 1)])
    df = pd.concat([df, df[(df["tuple"] == 9) & (df["axis"] == 1)].iloc[:1]], ignore_index=True)
    df = df.sample(frac=1.0, random_state=0)  # row order must not matter
    src = write(df, tmp_path / "MINFLUXStatic" / "parsed" / "20nm" / "mf_a" / "parsed.pkl")

    rec, report = load_hensel(src)
    keep = np.setdiff1d(np.arange(len(counts)), [5, 7, 9])
    assert report.incomplete_dropped == 3 and report.tuples_seen == len(counts) and len(rec) == len(keep)
    np.testing.assert_array_equal(rec.tuples.counts, counts[keep])
    np.testing.assert_allclose(rec.tuples.positions, positions[keep], atol=1e-4)
    assert rec.tuples.counts.dtype == np.uint16 and rec.tuples.positions.dtype == np.float32
    # ascending beam position per axis: centre-L/2, centre, centre+L/2
    assert (np.diff(rec.tuples.positions, axis=2) > 0).all()
    np.testing.assert_array_equal(rec.tuples.trace_id, traces[keep])  # single experiment -> index 0
    np.testing.assert_array_equal(rec.truth["d_nm"], 20.0)
    assert rec.meta["pos_unit_in_source"] == "nm" and rec.meta["experiments"] == ["mf_2023-01-01_a"]
    assert "state" not in rec.truth and not rec.meta["two_emitter_only"]

    back = load_recording(rec.save(tmp_path / "out.npz"))
    np.testing.assert_array_equal(back.tuples.counts, rec.tuples.counts)
    np.testing.assert_array_equal(back.tuples.positions, rec.tuples.positions)
    np.testing.assert_array_equal(back.tuples.trace_id, rec.tuples.trace_id)
    np.testing.assert_array_equal(back.truth["d_nm"], rec.truth["d_nm"])
    assert back.meta["source"] == "hensel-parsed-pkl" and back.meta["conversion"]["incomplete_dropped"] == 3


def test_cli_convert_writes_replay_file(tmp_path, sim, capsys):
    counts, positions, traces = sim
    src = write(hensel_frame(counts, positions, traces, gt=15), tmp_path / "15nm" / "e" / "parsed.pkl")
    out = tmp_path / "rec.npz"
    assert main(["convert", str(src), str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {len(counts):,} tuples (hensel)" in printed and "15 nm" in printed
    rec = load_recording(out)
    np.testing.assert_array_equal(rec.tuples.counts, counts)


@pytest.mark.parametrize("unit,scale", [("m", 1e-9), ("um", 1e-3)])
def test_positions_in_other_units_are_converted(tmp_path, sim, unit, scale):
    counts, positions, traces = sim
    src = write(hensel_frame(counts, positions * scale, traces), tmp_path / "20nm" / "parsed.pkl")
    rec = load_any(src)
    assert rec.meta["pos_unit_in_source"] == unit
    np.testing.assert_allclose(rec.tuples.positions, positions, rtol=1e-6, atol=1e-3)
    # an explicit unit wins over the inference
    forced = load_any(src, pos_unit="nm")
    np.testing.assert_allclose(forced.tuples.positions, (positions * scale).astype(np.float32))


def test_state_files_keep_only_two_emitter_tuples(tmp_path, sim):
    counts, positions, traces = sim
    exp = "mf_b"
    df = hensel_frame(counts, positions, traces, experiment_id=exp)
    src = write(df, tmp_path / "Dyn" / "parsed" / "raw" / "20nm" / exp / "parsed.pkl")
    n = len(counts)
    # segments: tuples 0-39 -> seg 0, 40-69 -> seg 1, 70-89 -> seg 2; 90-99 are in no segment
    seg = np.select([df["tuple"] < 40, df["tuple"] < 70, df["tuple"] < 90], [0, 1, 2], -1)
    filt = df.assign(segment_id=seg.astype(float))[seg >= 0].copy()
    filt["state_id"] = np.where(filt["segment_id"] == 0, 2.0, np.nan)  # pre-assigned for segment 0 only
    filt = filt[filt["tuple"] != 3]  # tuple 3 removed by the outlier filter
    write(filt, tmp_path / "Dyn" / "filtered" / "raw" / "20nm" / exp / "filtered.pkl")
    results = pd.DataFrame({"experiment_id": [exp, exp, "other"], "segment_id": [1.0, 2.0, 0.0],
                            "state_id": [2.0, 1.0, 0.0], "photons": [20.0, 10.0, 1.0]})
    write(results, tmp_path / "Dyn" / "filtered" / "filter-results.pkl")

    rec, report = load_hensel(src)
    expected = np.r_[np.arange(0, 3), np.arange(4, 70)]
    np.testing.assert_array_equal(rec.tuples.counts, counts[expected])
    np.testing.assert_array_equal(rec.truth["state"], 2)
    assert report.state_dropped == n - len(expected) and len(report.state_files) == 2
    assert rec.meta["two_emitter_only"]

    every, _ = load_hensel(src, two_emitter_only=False)
    want = np.full(n, -1)
    want[:40], want[40:70], want[70:90], want[3] = 2, 2, 1, -1
    np.testing.assert_array_equal(every.truth["state"], want)
    ignored, _ = load_hensel(src, states=False)
    assert len(ignored) == n and "state" not in ignored.truth


def test_folder_of_experiments(tmp_path):
    a, b = simulate_static(2, 10, seed=1), simulate_static(3, 10, seed=2)
    write(hensel_frame(a.tuples.counts, a.tuples.positions.astype(float), a.tuples.trace_id,
                       experiment_id="x1", gt=15), tmp_path / "parsed" / "15nm" / "x1" / "parsed.pkl")
    write(hensel_frame(b.tuples.counts, b.tuples.positions.astype(float), b.tuples.trace_id,
                       experiment_id="x2", gt=30), tmp_path / "parsed" / "30nm" / "x2" / "parsed.pkl")
    rec, report = load_with_report(tmp_path / "parsed")
    assert len(rec) == 50 and len(report["files"]) == 2
    np.testing.assert_array_equal(rec.truth["d_nm"], np.r_[np.full(20, 15.0), np.full(30, 30.0)])
    np.testing.assert_array_equal(rec.tuples.counts, np.concatenate([a.tuples.counts, b.tuples.counts]))
    assert rec.meta["experiments"] == ["x1", "x2"]
    np.testing.assert_array_equal(rec.tuples.trace_id >> 32, np.r_[np.zeros(20), np.ones(30)])
    np.testing.assert_array_equal(rec.tuples.trace_id & 0xFFFFFFFF,
                                  np.r_[a.tuples.trace_id, b.tuples.trace_id])


def test_nominal_distance_from_folder_names():
    assert nominal_distance_from_path(Path("/d/MINFLUXStatic/parsed/08nm/b1/parsed.pkl")) == 8.0
    assert nominal_distance_from_path(Path("/d/raw/20nm/x/parsed.pkl")) == 20.0
    assert nominal_distance_from_path(Path("/d/raw/x/parsed.pkl")) is None


def _error(tmp_path, df, match, name="20nm/parsed.pkl", **kw):
    src = tmp_path / name
    src.parent.mkdir(parents=True, exist_ok=True)
    df.to_pickle(src) if isinstance(df, pd.DataFrame) else src.write_bytes(df)
    with pytest.raises(ValueError, match=match) as err:
        load_hensel(src, **kw)
    assert str(src) in str(err.value)


def test_malformed_hensel_files(tmp_path, sim):
    counts, positions, traces = sim
    good = hensel_frame(counts, positions, traces)
    _error(tmp_path, good.drop(columns=["photons"]), r"missing column\(s\) \['photons'\]")
    _error(tmp_path, good.assign(photons=good["photons"].astype(object).where(good.index != 4, "x")),
           r"'photons' has 1 non-numeric")
    _error(tmp_path, good.assign(photons=good["photons"] + 0.5), "integer counts")
    _error(tmp_path, good.assign(axis=np.where(good.index == 0, 2, good["axis"])), r"0 \(x\) or 1 \(y\)")
    _error(tmp_path, good[good["axis"] == 0], "no complete tuples")
    _error(tmp_path, good.iloc[:0], "no rows")
    _error(tmp_path, good.assign(gt=30), "folder name says 20 nm but column 'gt' says 30 nm")
    _error(tmp_path, good.assign(pos=good["pos"] * 1e4), "cannot infer the unit")
    _error(tmp_path, b"not a pickle", "cannot read as a pandas pickle")
    src = tmp_path / "series" / "parsed.pkl"
    src.parent.mkdir()
    pd.Series([1, 2]).to_pickle(src)
    with pytest.raises(ValueError, match="expected a pandas DataFrame"):
        load_hensel(src)


def test_state_file_without_states_is_an_error(tmp_path, sim):
    counts, positions, traces = sim
    df = hensel_frame(counts, positions, traces)
    src = write(df, tmp_path / "20nm" / "e" / "parsed.pkl")
    write(df.assign(segment_id=0.0), tmp_path / "20nm" / "e" / "segmented.pkl")
    with pytest.raises(ValueError, match="cannot tell two-emitter tuples"):
        load_hensel(src)
    assert len(load_hensel(src, states=False)[0]) == len(counts)


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    bad = tmp_path / "20nm" / "parsed.pkl"
    bad.parent.mkdir()
    pd.DataFrame({"pos": [1.0]}).to_pickle(bad)
    assert main(["convert", str(bad), str(tmp_path / "o.npz")]) == 2
    err = capsys.readouterr().err
    assert "streamer convert: error:" in err and "missing column" in err and "Traceback" not in err
    assert main(["convert", str(tmp_path / "x.csv"), str(tmp_path / "o.npz")]) == 2
    assert main(["convert", str(bad), str(tmp_path / "o.txt")]) == 2
    assert "must end in .npz" in capsys.readouterr().err


def test_converted_tuples_pass_packet_validation(tmp_path, sim):
    from streamer.modalities.minflux.wire import decode_packet, encode_batch

    counts, positions, traces = sim
    src = write(hensel_frame(counts, positions * 1e-9, traces), tmp_path / "20nm" / "parsed.pkl")
    rec = load_any(src)
    packet = decode_packet(encode_batch("test", 0, rec.tuples))  # what `streamer publish` sends
    np.testing.assert_array_equal(packet.batch.counts, counts)
    np.testing.assert_array_equal(packet.batch.trace_id, traces)
