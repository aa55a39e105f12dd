"""Instrument profiles for diffusion: mismatch is flagged (no interval), calibration recovers the
instrument, and calibrate -> train -> serve works end to end on tiny settings."""

import numpy as np
import pytest

from streamer.core import profile as prof
from streamer.core import registry, wire
from streamer.modalities.diffusion import STACKS
from streamer.modalities.diffusion.calibrate import calibrate_beads
from streamer.modalities.diffusion.physics import Optics, simulate
from streamer.modalities.diffusion.instrument import optics_of_profile
from streamer.pipeline.worker import Served, serve_raw

DIFF = registry.get("diffusion")


def _packet(op: Optics, n=4, seed=0, instrument=None, d=0.5):
    rng = np.random.default_rng(seed)
    b = simulate(rng, np.full(n, d), np.full(n, 2000.0), np.full(n, 1.0), op)
    header = {"n": n, "frames": op.frames, "height": op.height, "width": op.width, "pixel_nm": op.pixel_nm,
              "frame_s": op.frame_s, "exposure_s": op.exposure, "baseline": op.baseline,
              "adu_per_photon": op.adu_per_photon}
    return wire.encode_packet("diffusion", "stacks", "s", 0, header, {"stacks": b.stacks}, spec=STACKS,
                              instrument=instrument)


def _serve(served, raw):
    return serve_raw(served, raw)


@pytest.fixture(scope="module")
def nominal_worker():
    return Served({"diffusion": "trees"})


PROFILE_B = {"pixel_nm": 108.0, "frame_s": 0.005, "fwhm_nm": 350.0, "adu_per_photon": 0.5, "baseline": 400.0,
             "read_sigma": 2.5}


def _b():
    return prof.nominal(DIFF, "scopeB").with_values(PROFILE_B, "test")


def test_nominal_packets_are_covered(nominal_worker):
    res = _serve(nominal_worker, _packet(Optics(frames=16, height=32, width=32)))
    assert not (res.flags & 4).any() and np.isfinite(res.D_lo).all() and res.invalid == {}


def test_other_pixel_size_in_the_header_is_flagged_without_interval(nominal_worker):
    op = Optics(frames=16, height=32, width=32, pixel_nm=108.0, frame_s=0.005)
    res = _serve(nominal_worker, _packet(op))
    assert (res.flags & 4).all() and np.isnan(res.D_lo).all() and np.isnan(res.D_hi).all()
    assert np.isfinite(res.D).all()  # the estimate stays, marked
    assert res.invalid == {"instrument-mismatch": 4}


def test_named_profile_outside_the_model_is_flagged_and_unknown_names_too(tmp_path):
    served = Served({"diffusion": "trees"}, [_b()], models_dir=tmp_path)  # no bundle trained for B here
    op = optics_of_profile(_b(), frames=16, size=32)
    res = _serve(served, _packet(op, instrument="scopeB"))
    assert res.invalid == {"instrument-mismatch": 4} and np.isnan(res.D_lo).all()
    # same header as nominal, but the stream says it comes from B (PSF 350 nm): still flagged
    res = _serve(served, _packet(Optics(frames=16, height=32, width=32), instrument="scopeB"))
    assert res.invalid == {"instrument-mismatch": 4}
    res = _serve(served, _packet(Optics(frames=16, height=32, width=32), instrument="scopeZ"))
    assert res.invalid == {"instrument-unknown": 4} and (res.flags & 4).all()


def test_a_profile_for_another_modality_is_refused():
    other = prof.InstrumentProfile("minflux", "m", {"v0": 1.0})
    with pytest.raises(ValueError, match="for minflux"):
        Served({"diffusion": "trees"}, [other])


def test_beads_recover_the_instrument():
    op = optics_of_profile(_b(), frames=16, size=32)
    rng = np.random.default_rng(5)
    beads = simulate(rng, np.zeros(60), np.full(60, 2000.0), np.full(60, 1.0), op).stacks
    fit = calibrate_beads(beads, op.pixel_nm, op.baseline)
    assert fit.fwhm_nm == pytest.approx(350.0, rel=0.02)
    assert fit.gain == pytest.approx(0.5, rel=0.05)
    assert fit.read_sigma == pytest.approx(2.5, rel=0.25)


def test_calibrate_train_serve_round_trip(tmp_path):
    """Tiny settings: the point is the plumbing (profile file -> bundle recording its hash -> worker
    serving it for packets that name it), not accuracy."""
    from streamer.cli import main
    from streamer.core.recording import Recording

    b = _b()
    b_file = tmp_path / "scopeB.toml"
    b.save(b_file)
    op = optics_of_profile(b, frames=16, size=32)
    beads = simulate(np.random.default_rng(1), np.zeros(30), np.full(30, 2000.0), np.full(30, 1.0), op)
    header = {"frames": 16, "height": 32, "width": 32, "pixel_nm": op.pixel_nm, "frame_s": op.frame_s,
              "exposure_s": op.exposure, "baseline": op.baseline, "adu_per_photon": op.adu_per_photon}
    Recording("diffusion", "stacks", {"stacks": beads.stacks}, header).save(tmp_path / "beads.npz")
    cal = tmp_path / "scopeB-cal.toml"
    assert main(["calibrate", "--modality", "diffusion", str(tmp_path / "beads.npz"), "--out", str(cal),
                 "--name", "scopeB"]) == 0
    fitted = prof.load(cal, registry.get)
    assert fitted["fwhm_nm"] == pytest.approx(350.0, rel=0.03) and fitted.provenance["fwhm_nm"].startswith("calibrate")
    models = tmp_path / "models"
    assert main(["train", "--modality", "diffusion", "--instrument", str(cal), "--n-train", "600", "--n-cal", "400",
                 "--rounds", "10", "--out", str(models / "diffusion" / "trees-scopeB")]) == 0
    served = Served({"diffusion": "trees"}, [fitted], models_dir=models)
    assert "trees-scopeB" in served.model_ids()
    op_fit = optics_of_profile(fitted, frames=16, size=32)
    res = _serve(served, _packet(op_fit, instrument="scopeB"))
    assert res.invalid == {} and np.isfinite(res.D_lo).all() and not (res.flags & 4).any()
    # the nominal model still serves (and flags) a packet from B's camera that names no instrument
    # only when no profile is the default; here B is the worker's default profile, so it is covered
    res = _serve(served, _packet(op_fit))
    assert res.invalid == {}


def test_publisher_names_the_instrument_in_every_packet():
    import zmq

    from streamer.client import Publisher

    ctx = zmq.Context.instance()
    pull = ctx.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    try:
        with Publisher(f"tcp://127.0.0.1:{port}", "s", modality="diffusion", instrument="scopeB", context=ctx) as pub:
            stacks = np.zeros((1, 4, 16, 16), "<u2")
            pub.send(stacks=stacks, frames=4, height=16, width=16, frame_s=0.01)
        assert pull.poll(5000)
        assert wire.unpack(pull.recv())["instrument"] == "scopeB"
    finally:
        pull.close(0)
