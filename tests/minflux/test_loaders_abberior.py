"""Abberior Imspector exports (.npy structured, .mat) -> replay recording, and the refusals."""

import numpy as np
import pytest
from scipy.io import savemat

from streamer.cli import main
from streamer.modalities.minflux.loaders import detect_format, load_any
from streamer.modalities.minflux.loaders.abberior import load_abberior
from streamer.modalities.minflux.recording import load_recording

N, ITERS, HALF_L_NM = 12, 4, 20.0
# iteration fields of the nested (m2205) layout as listed by pyMINFLUX's reader, plus per-exposure counts
ITR_FIELDS = [("itr", "<i4"), ("tic", "<u8"), ("loc", "<f8", (3,)), ("lnc", "<f8", (3,)), ("eco", "<i4"),
              ("ecc", "<i4"), ("efo", "<f8"), ("efc", "<f8"), ("sta", "<i4"), ("cfr", "<f8"), ("dcr", "<f8"),
              ("ext", "<f8", (3,)), ("gvy", "<f8"), ("gvx", "<f8"), ("eoy", "<f8"), ("eox", "<f8"),
              ("dmz", "<f8"), ("lcy", "<f8"), ("lcx", "<f8"), ("lcz", "<f8"), ("fbg", "<f8")]
TOP_FIELDS = [("sqi", "<u4"), ("gri", "<u4"), ("tim", "<f8"), ("tid", "<i4"), ("vld", "?"), ("act", "?"),
              ("dos", "<i4"), ("sky", "<i4")]


@pytest.fixture
def truth():
    rng = np.random.default_rng(5)
    return {
        "counts": rng.integers(0, 60, (N, ITERS, 6)),
        "loc": rng.normal(0, 200e-9, (N, ITERS, 3)),
        "lc": rng.normal(0, 5e-9, (N, ITERS, 2)),
        "vld": np.arange(N) % 4 != 1,
        "tid": np.repeat(np.arange(N // 3), 3) + 100,
        "tim": np.arange(N) * 1e-3 + 0.5,
    }


def nested_array(t, with_counts=True):
    itr_fields = ITR_FIELDS + ([("phe", "<i4", (6,))] if with_counts else [])
    arr = np.zeros(N, dtype=[("itr", itr_fields, (ITERS,))] + TOP_FIELDS)
    arr["itr"]["itr"] = np.arange(ITERS)
    arr["itr"]["loc"] = t["loc"]
    arr["itr"]["lcx"], arr["itr"]["lcy"] = t["lc"][..., 0], t["lc"][..., 1]
    arr["itr"]["ext"] = [2 * HALF_L_NM * 1e-9, 2 * HALF_L_NM * 1e-9, 0.0]
    arr["itr"]["eco"] = t["counts"].sum(-1)
    if with_counts:
        arr["itr"]["phe"] = t["counts"]
    arr["vld"], arr["tid"], arr["tim"] = t["vld"], t["tid"], t["tim"]
    return arr


def expected(t):
    v = t["vld"]
    centre = (t["loc"][v, -1, :2] - t["lc"][v, -1]) * 1e9
    return (t["counts"][v, -1].reshape(-1, 2, 3),
            centre[:, :, None] + HALF_L_NM * np.array([-1.0, 0.0, 1.0]))


def check(rec, t):
    counts, positions = expected(t)
    np.testing.assert_array_equal(rec.tuples.counts, counts)
    np.testing.assert_allclose(rec.tuples.positions, positions, atol=1e-3)
    np.testing.assert_array_equal(rec.tuples.trace_id, t["tid"][t["vld"]])
    np.testing.assert_array_equal(rec.tuples.time_s, t["tim"][t["vld"]])


def test_nested_npy_last_iteration_valid_only_roundtrip(tmp_path, truth):
    src = tmp_path / "export.npy"
    np.save(src, nested_array(truth))
    rec, report = load_abberior(src, distance_nm=12.0)
    check(rec, truth)
    assert report == {"localizations": N, "invalid_dropped": 3, "unlocalized_dropped": 0, "kept": 9,
                      "resorted_by_time": False}
    assert rec.meta["centre_from"] == "loc - (lcx, lcy)" and rec.meta["half_l_from"] == "ext / 2"
    back = load_recording(rec.save(tmp_path / "o.npz"))
    check(back, truth)
    np.testing.assert_array_equal(back.truth["d_nm"], 12.0)
    assert back.meta["source"] == "abberior-npy"


def test_nested_mat_matches_npy(tmp_path, truth):
    arr = nested_array(truth)
    itr = {name: arr["itr"][name] for name in arr["itr"].dtype.names}  # (N, ITERS[, k]) each
    top = {name: arr[name] for name in arr.dtype.names if name != "itr"}
    src = tmp_path / "export.mat"
    savemat(src, {"itr": itr, **top})
    assert detect_format(src) == "abberior"
    check(load_any(src), truth)


def test_flat_m2410_layout_with_given_half_l(tmp_path, truth):
    # one record per iteration; fnl marks the final one; no ext / lcx -> centre = loc, L/2 must be given
    rows = N * ITERS
    arr = np.zeros(rows, dtype=[("vld", "?"), ("fnl", "?"), ("tid", "<u4"), ("tim", "<f8"), ("itr", "<i4"),
                                ("loc", "<f8", (3,)), ("eco", "<u4"), ("efo", "<f4"), ("phe", "<u2", (6,))])
    arr["itr"] = np.tile(np.arange(ITERS), N)
    arr["fnl"] = arr["itr"] == ITERS - 1
    arr["vld"] = np.repeat(truth["vld"], ITERS)
    arr["tid"], arr["tim"] = np.repeat(truth["tid"], ITERS), np.repeat(truth["tim"], ITERS)
    arr["loc"], arr["phe"] = truth["loc"].reshape(rows, 3), truth["counts"].reshape(rows, 6)
    src = tmp_path / "flat.npy"
    np.save(src, arr)
    with pytest.raises(ValueError, match="no 'ext'.*--half-l-nm"):
        load_abberior(src)
    rec, _ = load_abberior(src, half_l_nm=HALF_L_NM)
    t = dict(truth, lc=np.zeros_like(truth["lc"]))
    check(rec, t)
    assert rec.meta["layout"].startswith("flat") and rec.meta["centre_from"] == "loc"
    mat = tmp_path / "flat.mat"
    savemat(mat, {name: arr[name] for name in arr.dtype.names})
    check(load_any(mat, half_l_nm=HALF_L_NM), t)


def test_aggregated_counts_only_is_refused_with_reason(tmp_path, truth, capsys):
    src = tmp_path / "standard.npy"
    np.save(src, nested_array(truth, with_counts=False))
    with pytest.raises(ValueError, match=r"no per-exposure photon counts field 'phe'.*aggregated counts "
                                         r"\(eco, ecc, efo, efc.*cannot be recovered from a sum"):
        load_abberior(src)
    assert main(["convert", str(src), str(tmp_path / "o.npz")]) == 2
    assert "aggregated counts" in capsys.readouterr().err
    # a differently named per-exposure field can be pointed at
    arr = nested_array(truth)
    renamed = arr.astype([("itr", [(n if n != "phe" else "cnt", *rest) for n, *rest in
                                   [(f[0], *f[1:]) for f in ITR_FIELDS + [("phe", "<i4", (6,))]]], (ITERS,))]
                         + TOP_FIELDS)
    np.save(src, renamed)
    check(load_any(src, counts_field="cnt"), truth)


def test_malformed_abberior_files(tmp_path, truth):
    plain = tmp_path / "plain.npy"
    np.save(plain, np.zeros((4, 6)))
    with pytest.raises(ValueError, match="plain array"):
        load_abberior(plain)
    no_itr = tmp_path / "noitr.npy"
    np.save(no_itr, np.zeros(3, dtype=[("tid", "<i4"), ("vld", "?")]))
    with pytest.raises(ValueError, match="lacks the 'itr' field"):
        load_abberior(no_itr)
    bad_shape = nested_array(truth).astype([("itr", ITR_FIELDS + [("phe", "<i4", (4,))], (ITERS,))] + TOP_FIELDS)
    np.save(tmp_path / "shape.npy", bad_shape)
    with pytest.raises(ValueError, match=r"6 counts per localization .* got shape \(12, 4\)"):
        load_abberior(tmp_path / "shape.npy")
    negative = nested_array(truth)
    negative["itr"]["phe"][1, -1, 0] = -3  # localization 1 is invalid: its counts are not used
    np.save(tmp_path / "neg.npy", negative)
    check(load_abberior(tmp_path / "neg.npy")[0], truth)
    negative["itr"]["phe"][0, -1, 0] = -3
    np.save(tmp_path / "neg.npy", negative)
    with pytest.raises(ValueError, match=r"integer counts in \[0, 65535\]; 1 valid localization"):
        load_abberior(tmp_path / "neg.npy")
    none_valid = nested_array(truth)
    none_valid["vld"] = False
    np.save(tmp_path / "invalid.npy", none_valid)
    with pytest.raises(ValueError, match="no valid final-iteration localizations"):
        load_abberior(tmp_path / "invalid.npy")
    (tmp_path / "junk.npy").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.npy: not a readable .npy"):
        load_abberior(tmp_path / "junk.npy")
    (tmp_path / "junk.mat").write_bytes(b"junk" * 40)
    with pytest.raises(ValueError, match="junk.mat: not a readable MATLAB"):
        load_abberior(tmp_path / "junk.mat")
    savemat(tmp_path / "novld.mat", {"itr": {"loc": np.zeros((2, 1, 3))}})
    with pytest.raises(ValueError, match="lacks the 'vld' variable"):
        load_abberior(tmp_path / "novld.mat")


def test_matlab_v73_asks_for_reexport(tmp_path):
    # a v7.3 file is HDF5 with a 128-byte MATLAB header whose version bytes are 0x0200
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    src = tmp_path / "v73.mat"
    src.write_bytes(header.ljust(116) + b"\0" * 8 + b"\x00\x02IM" + b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    with pytest.raises(ValueError, match=r"v7\.3 \(HDF5\).*Re-export from Imspector as \.npy.*h5py"):
        load_abberior(src)


def test_unknown_file_type(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="cannot tell the format"):
        load_any(tmp_path / "x.csv")


def test_out_of_order_export_is_replayed_in_time_order_and_packets_validate(tmp_path, truth):
    from streamer.modalities.minflux.wire import decode_packet, encode_batch

    perm = np.random.default_rng(0).permutation(N)
    src = tmp_path / "shuffled.npy"
    np.save(src, nested_array(truth)[perm])
    rec, report = load_abberior(src)
    assert report["resorted_by_time"]
    check(rec, truth)  # truth is in time order
    packet = decode_packet(encode_batch("test", 0, rec.tuples))  # what `streamer publish` sends
    np.testing.assert_array_equal(packet.batch.counts, rec.tuples.counts)
    np.testing.assert_array_equal(packet.batch.time_s, rec.tuples.time_s)
