"""Single-electron physics: stopping power, scattering, charge yield, backscatter, diffusion."""

import numpy as np

from streamer.modalities.electron.physics import (CENTRE, EventPhysics, build_library, scattering_sigma,
                                                  simulate_deposits, stopping_power_kev_um)


def test_stopping_power_matches_estar_points():
    # ESTAR collision stopping power of Si (MeV cm2/g * 2.33 g/cm3 -> keV/um), within 15%
    for e_kev, estar in ((300, 1.45), (100, 2.62), (50, 4.1)):
        assert abs(stopping_power_kev_um(np.array(e_kev)) / (estar * 0.233) - 1) < 0.15


def test_scattering_grows_as_energy_falls():
    s = scattering_sigma(np.array([300.0, 100.0, 30.0]), 0.2)
    assert s[0] < s[1] < s[2]
    assert 0.01 < s[0] < 0.1  # rad per 0.2 um at 300 keV


def test_primary_charge_is_the_4um_ionization():
    rng = np.random.default_rng(1)
    dep, bs = simulate_deposits(4000, rng, EventPhysics(p_backscatter=0.0))
    q = dep[..., 3].sum(axis=1)
    expected = 4.0 * 0.338 * 1000 / 3.6  # ~376 e-
    assert abs(np.median(q) / expected - 1) < 0.08
    assert np.mean(q) > np.median(q)  # Landau-like tail
    assert not bs.any()
    # a 300 keV primary barely scatters in 4 um: lateral spread well under a pixel
    assert np.percentile(np.abs(dep[..., 0][dep[..., 3] > 0]), 95) < 1.0


def test_backscatter_fraction_and_long_tracks(lib):
    n = len(lib)
    p = 0.15
    assert abs(lib.backscatter.mean() - p) < 4 * np.sqrt(p * (1 - p) / n)
    # back-scattered electrons make the long, bright tracks
    assert np.median(lib.track_um[lib.backscatter]) > 5 * np.median(lib.track_um[~lib.backscatter])
    assert np.median(lib.charge[lib.backscatter]) > 2 * np.median(lib.charge[~lib.backscatter])


def test_stamps_conserve_charge_and_centre_on_entry(lib):
    compact = ~lib.backscatter
    s = lib.stamps[compact]
    # entry pixel holds the largest share for compact events, and the charge centroid sits near the entry
    k = np.arange(s.shape[-1])
    tot = s.sum(axis=(1, 2))
    cx = (s.sum(axis=1) * k).sum(1) / tot
    cy = (s.sum(axis=2) * k).sum(1) / tot
    ex, ey = CENTRE + lib.sub[compact, 0] - 0.5, CENTRE + lib.sub[compact, 1] - 0.5
    assert np.median(np.hypot(cx - ex, cy - ey)) < 0.1  # pixels
    assert (lib.sub >= 0).all() and (lib.sub < 1).all()


def test_diffusion_spreads_charge_over_neighbours():
    narrow = build_library(300, seed=5, phys=EventPhysics(p_backscatter=0.0, diff0_um=0.3, diff_slope=0.0))
    wide = build_library(300, seed=5, phys=EventPhysics(p_backscatter=0.0, diff0_um=2.5, diff_slope=0.0))
    frac = lambda lb: (lb.stamps.max(axis=(1, 2)) / lb.stamps.sum(axis=(1, 2))).mean()  # noqa: E731
    assert frac(narrow) > frac(wide) + 0.2


def test_crb_matches_the_continuous_gaussian_limit():
    """Read-noise CRB of a well-sampled Gaussian spot: sqrt(trace) = sigma_n s^2 sqrt(16 pi) / Q."""
    from streamer.modalities.electron.physics import _pixel_weights, crb_px

    s, q, noise = 3.0, 1000.0, 20.0
    c = np.array([[12.3]], np.float32)
    sig = np.array([[s]], np.float32)
    wx, dwx = _pixel_weights(c, sig, derivative=True)
    wy, dwy = _pixel_weights(c + 0.1, sig, derivative=True)
    dsx = q * np.einsum("kpj,kpi->kij", dwx, wy)
    dsy = q * np.einsum("kpj,kpi->kij", wx, dwy)
    expected = noise * s * s * np.sqrt(16 * np.pi) / q
    assert abs(crb_px(dsx, dsy, noise)[0] / expected - 1) < 0.03
    # linear in the read noise, inverse in the charge
    assert np.isclose(crb_px(2 * dsx, 2 * dsy, noise)[0], crb_px(dsx, dsy, noise)[0] / 2, rtol=1e-4)


def test_library_crb_floor_is_below_the_model_scale(lib):
    # compact events: ~380 e- over ~1-2 pixels -> a floor of a few tenths of a pixel
    assert 0.05 < np.median(lib.crb_px[~lib.backscatter]) < 0.3
    assert np.all(np.isfinite(lib.crb_px)) and np.all(lib.crb_px > 0)
