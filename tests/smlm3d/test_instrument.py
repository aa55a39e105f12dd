"""Instrument profiles for smlm3d (issue 14): profile files, mismatch flagged through the worker path
(no intervals), the MLE baseline fitting with the stream's curve, calibration from a bead z-stack, and
calibrate -> train -> serve on tiny settings."""

import importlib.util

import numpy as np
import pytest

from streamer.core import profile as prof
from streamer.core import registry, wire
from streamer.modalities.smlm3d import FRAMES
from streamer.modalities.smlm3d.instrument import camera_of, header_of, psf_of
from streamer.modalities.smlm3d.psf import DEFAULT_PSF
from streamer.modalities.smlm3d.simulate import SimConfig, simulate_frames
from streamer.pipeline.worker import Served, serve_raw

SMLM = registry.get("smlm3d")
MISMATCH = 64
#: instrument B: stronger astigmatism, other foci, 160 nm pixels, another camera
B = {"s0_nm": 130.0, "focus_nm": 350.0, "depth_nm": 450.0, "A": 0.1, "B": 0.04, "pixel_nm": 160.0,
     "baseline": 400.0, "adu_per_photon": 2.0, "read_noise": 3.0}


def _b(name="scopeB"):
    return prof.nominal(SMLM, name).with_values(B, "test")


def _packet(frames, header, instrument=None, seq=0):
    n, h, w = frames.shape
    return wire.encode_packet("smlm3d", "frames", "s", seq, {**header, "n": n, "height": h, "width": w},
                              {"frames": frames}, spec=FRAMES, instrument=instrument)


def _frames(profile=None, n=20, seed=3):
    extra = {}
    if profile is not None:
        extra = {"psf": psf_of(profile), "pixel_nm": profile["pixel_nm"], "camera": camera_of(profile)}
    return simulate_frames(SimConfig(n_frames=n, density=1.0, photons=5000, background=50, seed=seed, **extra))


NOMINAL_HEADER = {"pixel_nm": 100.0, "baseline": 100.0, "adu_per_photon": 1.0}


@pytest.fixture(scope="module")
def nominal_worker():
    return Served({"smlm3d": "trees-xgboost"})  # the shipped bundle (xgboost: no compile in tests)


# ---------------------------------------------------------------------- profile files


def test_profile_declares_the_simulators_instrument():
    nom = prof.nominal(SMLM)
    assert psf_of(nom) == DEFAULT_PSF
    cam = camera_of(nom)
    assert (cam.baseline, cam.adu_per_photon, cam.read_noise, cam.emccd) == (100.0, 1.0, 1.5, False)
    assert header_of(nom) == NOMINAL_HEADER
    assert nom["pixel_nm"] == SimConfig().pixel_nm
    headers = {p.name: p.header for p in SMLM.profile}
    assert headers["pixel_nm"] == "pixel_nm" and headers["baseline"] == "baseline"
    assert headers["adu_per_photon"] == "adu_per_photon"
    assert SMLM.results.mismatch_flag == MISMATCH and SMLM.results.flags[MISMATCH] == "instrument-mismatch"
    assert set(SMLM.results.intervals) == {"x_lo", "x_hi", "y_lo", "y_hi", "z_lo", "z_hi"}


def test_profile_files_parse_and_bad_ones_say_why(tmp_path):
    p = prof.parse('modality = "smlm3d"\nname = "ti2"\n[values]\npixel_nm = 108\ns0_nm = 125.5\n',
                   registry.get, "ti2.toml")
    assert p["pixel_nm"] == 108.0 and p["s0_nm"] == 125.5 and p["focus_nm"] == 250.0
    assert p.provenance["focus_nm"] == "nominal" and p.provenance["pixel_nm"] == "file"
    with pytest.raises(prof.ProfileError, match="unknown smlm3d parameters.*sigma0"):
        prof.parse('modality = "smlm3d"\n[values]\nsigma0 = 120\n', registry.get, "x.toml")
    with pytest.raises(prof.ProfileError, match="pixel_nm = 5 nm is outside"):
        prof.parse('modality = "smlm3d"\n[values]\npixel_nm = 5\n', registry.get, "x.toml")
    with pytest.raises(prof.ProfileError, match="s0_nm must be a number"):
        prof.parse('modality = "smlm3d"\n[values]\ns0_nm = "wide"\n', registry.get, "x.toml")
    with pytest.raises(prof.ProfileError, match="not valid TOML"):
        prof.parse('modality = "smlm3d"\n[values\n', registry.get, "x.toml")
    path = _b().save(tmp_path / "b.toml")
    assert prof.load(path, registry.get).hash == _b().hash


def test_the_shipped_bundle_covers_the_nominal_instrument_only(nominal_worker):
    cov = nominal_worker.predictors["smlm3d"].coverage
    assert cov.outside(prof.nominal(SMLM).values) == []
    assert cov.outside({"pixel_nm": 160.0}) and cov.outside({"s0_nm": 130.0}) and cov.outside({"focus_nm": 350.0})
    assert cov.outside({"emccd": 1.0})
    assert cov.outside({"baseline": 400.0, "adu_per_photon": 2.0}) == []  # converted per packet


# ---------------------------------------------------------------------- mismatch through the worker


def test_nominal_packets_are_served_with_intervals(nominal_worker):
    frames, _ = _frames()
    res = serve_raw(nominal_worker, _packet(frames, NOMINAL_HEADER))
    assert res.m > 0 and res.invalid == {}
    assert not (res.flags & MISMATCH).any() and np.isfinite(res.x_lo).all() and np.isfinite(res.z_hi).all()


def test_another_pixel_size_in_the_header_is_flagged_without_intervals(nominal_worker):
    frames, _ = _frames(_b())
    res = serve_raw(nominal_worker, _packet(frames, header_of(_b())))
    assert res.m > 0 and (res.flags & MISMATCH).all()
    for k in ("x_lo", "x_hi", "y_lo", "y_hi", "z_lo", "z_hi"):
        assert np.isnan(getattr(res, k)).all()
    assert np.isfinite(res.x).all() and np.isfinite(res.z).all()  # the estimates stay, marked
    assert res.invalid == {"instrument-mismatch": res.m}


def test_a_named_profile_outside_the_model_is_flagged_and_unknown_names_too(tmp_path):
    served = Served({"smlm3d": "trees-xgboost"}, [_b()], models_dir=tmp_path)  # no bundle trained for B here
    frames, _ = _frames()
    # nominal-looking header, but the stream says it is B (another curve): not what the model covers
    res = serve_raw(served, _packet(frames, NOMINAL_HEADER, instrument="scopeB"))
    assert res.m > 0 and res.invalid == {"instrument-mismatch": res.m} and np.isnan(res.z_lo).all()
    res = serve_raw(served, _packet(frames, NOMINAL_HEADER, instrument="scopeZ"))
    assert res.invalid == {"instrument-unknown": res.m} and (res.flags & MISMATCH).all()


def test_the_mle_baseline_fits_with_the_streams_curve(tmp_path):
    """The physics baseline adapts to a profile without retraining: on B's frames it is unflagged
    and accurate in z with B's profile, biased without it (the nominal curve)."""
    from streamer.modalities.smlm3d.metrics import match

    frames, truth = _frames(_b(), n=40, seed=5)
    with_b = Served({"smlm3d": "mle"}, [_b()], models_dir=tmp_path)
    plain = Served({"smlm3d": "mle"})
    errs, found = [], []
    for served in (with_b, plain):
        res = serve_raw(served, _packet(frames, header_of(_b()), instrument="scopeB" if served is with_b else None))
        assert res.invalid == {} and not (res.flags & MISMATCH).any()
        keep = (res.flags & 1) == 0
        est = np.column_stack([res.x, res.y, res.z])[keep]
        T = np.column_stack([truth["x"], truth["y"], truth["z"]])
        ie, it = match(res.item[keep], est, truth["item"], T)
        found.append(len(ie) / len(T))
        errs.append(np.sqrt(np.mean((est[ie, 2] - T[it, 2]) ** 2)))
    # B's curve: every emitter found, z to tens of nm; the nominal curve: emitters lost, z off by hundreds
    assert found[0] >= 0.95 and errs[0] < 80.0
    assert found[1] < found[0] and errs[1] > 3 * errs[0]


# ---------------------------------------------------------------------- calibration


def test_bead_calibration_recovers_the_curve_within_3_percent():
    from streamer.modalities.smlm3d.calibrate import calibrate_beads, curve_error, simulate_beads

    b = _b()
    frames, z = simulate_beads(psf_of(b), camera_of(b), b["pixel_nm"], n_beads=4, z_step_nm=40.0,
                               z_offset_nm=30.0, seed=2)
    cal = calibrate_beads(frames, z, b["pixel_nm"], b["baseline"], b["adu_per_photon"])
    assert cal.beads == 4
    assert curve_error(cal.psf, psf_of(b)) < 0.03
    assert cal.z0_nm == pytest.approx(30.0, abs=10.0)
    assert cal.residual_rms_nm < 5.0
    # the check can fail: a wrong pixel size scales every width
    wrong = calibrate_beads(frames, z, 100.0, b["baseline"], b["adu_per_photon"])
    assert curve_error(wrong.psf, psf_of(b)) > 0.2


def test_calibration_refuses_a_stack_without_beads():
    from streamer.modalities.smlm3d.calibrate import calibrate_beads

    rng = np.random.default_rng(0)
    flat = rng.poisson(50, (20, 64, 64)).astype(np.uint16) + 100
    with pytest.raises(ValueError, match="no isolated beads"):
        calibrate_beads(flat, np.arange(20) * 50.0, 100.0)


# ---------------------------------------------------------------------- calibrate -> train -> serve


def test_calibrate_train_serve_round_trip(tmp_path):
    """Tiny settings: the plumbing (profile file -> simulated bead stack TIFF -> fitted profile ->
    bundle recording its hash -> worker serving it for packets that name it), not accuracy."""
    from streamer.cli import main
    from streamer.core.recording import load_recording

    b_file = _b().save(tmp_path / "scopeB.toml")
    tif = tmp_path / "beads.tif"
    assert main(["simulate", "--modality", "smlm3d", str(tmp_path / "beads.npz"), "--beads", str(tif),
                 "--instrument", str(b_file), "--z-step-nm", "40", "--n-beads", "4"]) == 0
    cal = tmp_path / "scopeB-cal.toml"
    assert main(["calibrate", "--modality", "smlm3d", str(tif), "--out", str(cal), "--name", "scopeB",
                 "--z-step-nm", "40", "--read-noise", "3"]) == 0
    fitted = prof.load(cal, registry.get)
    assert fitted["pixel_nm"] == 160.0 and fitted.provenance["pixel_nm"] == "TIFF description"
    assert fitted["s0_nm"] == pytest.approx(130.0, rel=0.03) and fitted.provenance["s0_nm"].startswith("calibrate")
    assert fitted["focus_nm"] == pytest.approx(350.0, abs=15.0)
    assert fitted["read_noise"] == 3.0 and fitted.provenance["read_noise"] == "option"
    # the plot needs matplotlib, which is optional (not in the core install)
    assert (tmp_path / "scopeB-cal.png").is_file() == (importlib.util.find_spec("matplotlib") is not None)
    assert main(["simulate", "--modality", "smlm3d", str(tmp_path / "b.npz"), "--instrument", str(cal),
                 "--frames", "20", "--density", "1"]) == 0
    models = tmp_path / "models"
    assert main(["train", "--modality", "smlm3d", "--instrument", str(cal), "--tiny",
                 "--out", str(models / "smlm3d" / "trees-scopeB")]) == 0
    served = Served({"smlm3d": "trees-xgboost"}, [fitted], models_dir=models)
    assert "trees-scopeB" in served.model_ids()
    rec = load_recording(tmp_path / "b.npz")
    assert rec.header["pixel_nm"] == 160.0 and rec.header["baseline"] == 400.0
    res = serve_raw(served, _packet(rec.arrays["frames"], header_of(fitted), instrument="scopeB"))
    assert res.m > 0 and res.invalid == {} and not (res.flags & MISMATCH).any() and np.isfinite(res.z_lo).all()
    # the shipped model, for the same packet without B's bundle, flags it
    res = serve_raw(Served({"smlm3d": "trees-xgboost"}), _packet(rec.arrays["frames"], header_of(fitted)))
    assert res.invalid == {"instrument-mismatch": res.m}
