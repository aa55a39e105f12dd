"""The diffusion instrument: its profile parameters, and conversions between profiles, simulator
optics and what a trees bundle covers (imports stay light: the sink loads this with the modality)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...core.profile import ProfileParam

if TYPE_CHECKING:  # annotations only: the simulator is imported where it runs
    from .physics import Optics

#: the instrument (``streamer profile new --modality diffusion``); nominal = the simulator's Optics()
PROFILE = (
    ProfileParam("pixel_nm", "nm", 200.0, 1.0, 10_000.0, header="pixel_nm", doc="pixel size in the sample plane"),
    ProfileParam("frame_s", "s", 0.010, 1e-6, 100.0, header="frame_s", doc="frame period"),
    ProfileParam("exposure_fraction", "", 1.0, 0.01, 1.0, doc="exposure / frame period (1: continuous)"),
    ProfileParam("fwhm_nm", "nm", 250.0, 50.0, 5_000.0, tol=0.06, doc="PSF full width at half maximum"),
    ProfileParam("read_sigma", "e-", 1.6, 0.0, 100.0, tol=1.0, atol=1.0, doc="camera read noise (rms)"),
    ProfileParam("baseline", "ADU", 100.0, 0.0, 65_535.0, doc="camera offset"),
    ProfileParam("adu_per_photon", "ADU/photon", 2.0, 1e-3, 1_000.0, doc="camera gain"),
)


def profile_of(op: "Optics", name: str = "trained", source: str = "bundle optics"):
    """The instrument profile of simulator optics."""
    from ...core.profile import InstrumentProfile

    values = {"pixel_nm": op.pixel_nm, "frame_s": op.frame_s, "exposure_fraction": op.exposure / op.frame_s,
              "fwhm_nm": op.fwhm_nm, "read_sigma": op.read_sigma, "baseline": op.baseline,
              "adu_per_photon": op.adu_per_photon}
    return InstrumentProfile("diffusion", name, values, {k: source for k in values})


def optics_of_profile(profile, frames: int = 16, size: int = 64) -> Optics:
    """Simulator optics of an instrument profile (stack shape from the arguments)."""
    from .physics import Optics

    return Optics(frames=frames, height=size, width=size, pixel_nm=profile["pixel_nm"], frame_s=profile["frame_s"],
                  exposure_s=profile["exposure_fraction"] * profile["frame_s"], fwhm_nm=profile["fwhm_nm"],
                  read_sigma=profile["read_sigma"], baseline=profile["baseline"],
                  adu_per_photon=profile["adu_per_photon"])


def coverage(manifest: dict):
    """What a trees bundle covers: its recorded instrument entry, or (bundles trained before
    profiles existed) its optics within each parameter's tolerance, with the PSF width over the
    range the training drew it from. Gain, offset and read noise are taken from the packet or barely
    matter (photon-counted features), so they are covered wide."""
    from ...core.profile import Coverage
    from .physics import Optics

    if manifest.get("instrument"):
        return Coverage.from_manifest("diffusion", manifest["instrument"])
    o = manifest["optics"]
    op = Optics(**{k: v for k, v in o.items() if k in Optics.__dataclass_fields__})
    wider = {"baseline": (0.0, 65_535.0), "adu_per_photon": (1e-3, 1_000.0), "read_sigma": (0.0, 2 * op.read_sigma + 1),
             "fwhm_nm": tuple(manifest["ranges"].get("psf_fwhm_nm", (op.fwhm_nm * 0.94, op.fwhm_nm * 1.06)))}
    return Coverage.around(profile_of(op), PROFILE, wider)
