"""Instrument profiles for electron (issue 14): profile files, mismatch flagged through the worker
path (no radius), calibration from dark + low-dose frames, and calibrate -> train -> serve on tiny
settings."""

import json

import numpy as np
import pytest

from streamer.core import profile as prof
from streamer.core import registry, wire
from streamer.modalities.electron import FRAMES
from streamer.modalities.electron.instrument import camera_of, coverage, header_of, physics_of
from streamer.modalities.electron.physics import build_library
from streamer.modalities.electron.simulate import simulate_frames
from streamer.pipeline.worker import Served, serve_raw

ELEC = registry.get("electron")
MISMATCH = 8
B = {"pixel_um": 6.5, "energy_kev": 200.0, "read_noise_e": 14.0, "adu_per_e": 2.5, "offset": 400.0}


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    """Event libraries of these tests go to a temporary cache, not the user's."""
    monkeypatch.setenv("STREAMER_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _b(name="scopeB"):
    return prof.nominal(ELEC, name).with_values(B, "test")


def _packet(frames, header, instrument=None, seq=0):
    n, h, w = frames.shape
    return wire.encode_packet("electron", "frames", "s", seq, {**header, "n": n, "height": h, "width": w},
                              {"frames": frames}, spec=FRAMES, instrument=instrument)


@pytest.fixture(scope="module")
def nominal_worker():
    return Served({"electron": "trees"})


@pytest.fixture(scope="module")
def frames_a(lib):
    return simulate_frames(lib, 6, 64, 64, rate=4.0, seed=3).frames


# ---------------------------------------------------------------------- profile files


def test_profile_declares_the_simulators_instrument():
    nom = prof.nominal(ELEC)
    assert dict(nom.values) == {"pixel_um": 5.0, "adu_per_e": 1.0, "offset": 100.0, "read_noise_e": 20.0,
                                "energy_kev": 300.0, "layer_um": 4.0}
    headers = {p.name: p.header for p in ELEC.profile}
    assert headers["pixel_um"] == "pixel_um" and headers["adu_per_e"] == "adu_per_e" and headers["offset"] == "offset"
    assert ELEC.results.mismatch_flag == MISMATCH and ELEC.results.flags[MISMATCH] == "instrument-mismatch"
    assert set(ELEC.results.intervals) == {"radius", "score"}


def test_profile_files_parse_and_bad_ones_say_why(tmp_path):
    p = prof.parse('modality = "electron"\nname = "k3"\n[values]\nenergy_kev = 200\npixel_um = 6.5\n',
                   registry.get, "k3.toml")
    assert p["energy_kev"] == 200.0 and p["read_noise_e"] == 20.0 and p.provenance["read_noise_e"] == "nominal"
    with pytest.raises(prof.ProfileError, match="unknown electron parameters.*gain"):
        prof.parse('modality = "electron"\n[values]\ngain = 2\n', registry.get, "x.toml")
    with pytest.raises(prof.ProfileError, match="energy_kev = 5000 keV is outside"):
        prof.parse('modality = "electron"\n[values]\nenergy_kev = 5000\n', registry.get, "x.toml")
    with pytest.raises(prof.ProfileError, match="read_noise_e must be a number"):
        prof.parse('modality = "electron"\n[values]\nread_noise_e = "low"\n', registry.get, "x.toml")
    path = _b().save(tmp_path / "b.toml")
    assert prof.load(path, registry.get).hash == _b().hash


def test_the_shipped_bundle_covers_the_nominal_instrument_only_within_measured_tolerances(nominal_worker):
    cov = nominal_worker.predictors["electron"].coverage
    assert cov.outside(prof.nominal(ELEC).values) == []
    assert cov.outside({"read_noise_e": 22.0}) and cov.outside({"pixel_um": 4.5}) and cov.outside({"energy_kev": 200})
    assert cov.outside({"adu_per_e": 4.0, "offset": 0.0}) == []  # divided out per packet (measured)
    assert coverage({"physics": {"pixel_um": 5.0, "energy_kev": 300.0, "layer_um": 4.0}}).ranges == cov.ranges


# ---------------------------------------------------------------------- mismatch through the worker


def test_nominal_packets_are_served_with_a_radius(nominal_worker, frames_a):
    res = serve_raw(nominal_worker, _packet(frames_a, {"pixel_um": 5.0, "adu_per_e": 1.0, "offset": 100.0}))
    assert res.m > 0 and res.invalid == {}
    assert not (res.flags & MISMATCH).any() and np.isfinite(res.radius).all()


def test_another_pixel_pitch_in_the_header_is_flagged_without_radius(nominal_worker, frames_a):
    res = serve_raw(nominal_worker, _packet(frames_a, {"pixel_um": 6.5, "adu_per_e": 1.0, "offset": 100.0}))
    assert res.m > 0 and (res.flags & MISMATCH).all()
    assert np.isnan(res.radius).all() and np.isnan(res.score).all()
    assert np.isfinite(res.x).all() and np.isfinite(res.y).all()  # the estimates stay, marked
    assert res.invalid == {"instrument-mismatch": res.m}


def test_a_named_profile_outside_the_model_is_flagged_and_unknown_names_too(tmp_path, frames_a):
    served = Served({"electron": "trees"}, [_b()], models_dir=tmp_path)  # no bundle trained for B here
    nominal_header = {"pixel_um": 5.0, "adu_per_e": 1.0, "offset": 100.0}
    # nominal-looking header, but the stream says it is B (200 keV, 14 e-): not what the model covers
    res = serve_raw(served, _packet(frames_a, nominal_header, instrument="scopeB"))
    assert res.invalid == {"instrument-mismatch": res.m} and np.isnan(res.radius).all()
    res = serve_raw(served, _packet(frames_a, nominal_header, instrument="scopeZ"))
    assert res.invalid == {"instrument-unknown": res.m} and (res.flags & MISMATCH).all()


# ---------------------------------------------------------------------- calibration


@pytest.fixture(scope="module")
def camera_b():
    """Dark frames and a low-dose series of instrument B (fresh events)."""
    b = _b()
    lib = build_library(3000, seed=55, phys=physics_of(b))
    dark = simulate_frames(lib, 20, 100, 100, rate=0.0, seed=1, **camera_of(b)).frames
    flat = simulate_frames(lib, 600, 100, 100, rate=3.0, seed=2, **camera_of(b)).frames
    return dark, flat


def test_calibration_recovers_offset_read_noise_and_gain(camera_b):
    from streamer.modalities.electron.calibrate import calibrate

    dark, flat = camera_b
    given = {**prof.nominal(ELEC).values, "pixel_um": 6.5, "energy_kev": 200.0}
    cal = calibrate(dark, flat, given, sim_electrons=4000, library_n=4000)
    assert cal.dark.offset == pytest.approx(400.0, abs=0.5)
    assert cal.dark.sigma_adu == pytest.approx(14.0 * 2.5, rel=0.02)
    assert cal.read_noise_e == pytest.approx(14.0, rel=0.1) and cal.adu_per_e == pytest.approx(2.5, rel=0.1)
    # the stated uncertainty is an honest one (a few percent here), and the fit's residuals are small
    assert 0.005 < cal.read_noise_se / cal.read_noise_e < 0.1
    assert max(abs(v) for v in cal.quantile_residuals[:-1]) < 0.1
    assert cal.energy_se is None and cal.energy_kev == 200.0  # given, not fitted


def test_calibration_refuses_a_series_without_events(camera_b):
    from streamer.modalities.electron.calibrate import calibrate

    dark, _ = camera_b
    with pytest.raises(ValueError, match="events in the low-dose series"):
        calibrate(dark, dark, dict(prof.nominal(ELEC).values))


# ---------------------------------------------------------------------- calibrate -> train -> serve


def test_calibrate_train_serve_round_trip(tmp_path):
    """Tiny settings: the plumbing (profile file -> simulated camera data -> fitted profile -> bundle
    recording its hash -> worker serving it for packets that name it), not accuracy."""
    from streamer.cli import main
    from streamer.core.recording import load_recording

    b_file = _b().save(tmp_path / "scopeB.toml")
    common = ["--modality", "electron", "--instrument", str(b_file), "--library", "2000", "--size", "64"]
    assert main(["simulate", str(tmp_path / "dark.npz"), "--dark", "--frames", "20", *common]) == 0
    assert main(["simulate", str(tmp_path / "flat.npz"), "--electrons", "2", "--frames", "500", "--seed", "4",
                 *common]) == 0
    rec = load_recording(tmp_path / "flat.npz")
    assert rec.header["pixel_um"] == 6.5 and rec.header["adu_per_e"] == 2.5 and rec.header["offset"] == 400.0
    cal = tmp_path / "scopeB-cal.toml"
    assert main(["calibrate", "--modality", "electron", str(tmp_path / "flat.npz"), "--dark", str(tmp_path / "dark.npz"),
                 "--out", str(cal), "--name", "scopeB", "--energy-kev", "200", "--sim-electrons", "3000",
                 "--sim-library", "3000"]) == 0
    fitted = prof.load(cal, registry.get)
    assert fitted["pixel_um"] == 6.5 and fitted.provenance["pixel_um"] == "header"
    assert fitted["adu_per_e"] == pytest.approx(2.5, rel=0.15) and fitted.provenance["adu_per_e"].startswith("calibrate")
    models = tmp_path / "models"
    assert main(["train", "--modality", "electron", "--instrument", str(cal), "--tiny", "--nthread", "1",
                 "--out", str(models / "electron" / "trees-scopeB")]) == 0
    manifest = json.loads((models / "electron" / "trees-scopeB" / "manifest.json").read_text())
    assert {"sdx", "sdy"} <= set(manifest["boosters"]) and manifest["specialist"]["scale_max"] > 0
    # recalibrating keeps every booster, the easy-event pair and its routing included
    from streamer.modalities.electron.instrument_train import TINY_CONFIG, config_for
    from streamer.modalities.electron.model import train

    again = train(config_for(fitted, {**TINY_CONFIG, "nthread": 1}), models / "electron" / "trees-scopeB",
                  log=lambda m: None, recalibrate=True, instrument=manifest["instrument"])
    assert again["sha256"] == manifest["sha256"] and again["specialist"] == manifest["specialist"]
    # refitting the error-scale booster refits the easy-event pair it routes to, nothing else
    refit = train(config_for(fitted, {**TINY_CONFIG, "nthread": 1, "scale_frames": 400}),
                  models / "electron" / "trees-scopeB", log=lambda m: None, recalibrate=True, refit_scale=True,
                  instrument=manifest["instrument"])
    changed = {k for k in manifest["sha256"] if refit["sha256"][k] != manifest["sha256"][k]}
    assert changed == {"scale.ubj", "sdx.ubj", "sdy.ubj"}
    served = Served({"electron": "trees"}, [fitted], models_dir=models)
    assert "trees-scopeB" in served.model_ids()
    frames = load_recording(tmp_path / "flat.npz").arrays["frames"][:50]
    header = header_of(fitted)
    res = serve_raw(served, _packet(frames, header, instrument="scopeB"))
    assert res.m > 0 and res.invalid == {} and np.isfinite(res.radius).all() and not (res.flags & MISMATCH).any()
    # the shipped model, for the same packet without B's bundle, flags it
    res = serve_raw(Served({"electron": "trees"}), _packet(frames, header))
    assert res.invalid == {"instrument-mismatch": res.m}
