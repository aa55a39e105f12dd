"""Electron-camera calibration (issue 14): offset and read noise from dark frames; gain (and, where
identifiable, the beam energy) from a flat low-dose series.

* Dark frames: ``offset`` = mean ADU, ``sigma_adu`` = rms ADU (read noise x gain); residual: the
  largest gap between the pixel-value distribution and a Gaussian (Kolmogorov distance).
* Low-dose series, in units of the dark noise (``(ADU - offset) / sigma_adu``): the gain cancels, and
  what is left depends on the read noise in electrons and the event physics only. Events are clusters
  of pixels above ``CLUSTER_SIGMA`` whose peak exceeds ``PEAK_SIGMA``; an event's charge is summed
  over its cluster grown by ``GROW`` pixels. Two gain-free statistics: ``r`` = the mean event
  charge (gain x charge per electron / sigma_adu, up to what the clusters miss) and
  ``s`` = q90 / q50 of the event charges (the shape of
  the Landau-like charge distribution: a slower beam deposits more per um in the primary track while
  back-scattered re-entries do not change, so the ratio falls with energy).
* The same procedure runs on simulated series of the candidate instrument (fresh library events,
  pixel pitch and layer as given): the read noise in electrons is adjusted until ``r`` matches
  (then gain = sigma_adu / read noise), and the energy, if asked, is read off ``s`` on a grid.
  Uncertainties: bootstrap over frames of the data and of the simulation.

The charge per electron in electrons is the physics' (stopping power, 3.6 eV per pair), so the gain
is only as right as the energy and layer it is computed for: gain x charge(E) is what the data fix;
``s`` separates them only through the shape of the charge distribution.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.special import erf

CLUSTER_SIGMA = 2.5  # pixels above this many dark sigmas belong to a cluster
PEAK_SIGMA = 6.0  # a cluster counts as an event when its brightest pixel exceeds this
GROW = 2  # pixels added around each cluster before summing its charge
MAX_SIM_PIXELS = 200 * 200  # reference frames are simulated at most this large (same occupancy)


@dataclass
class DarkFit:
    offset: float
    offset_se: float
    sigma_adu: float
    sigma_se: float
    ks: float  # Kolmogorov distance to a Gaussian (residual)
    pixels: int


@dataclass
class Calibration:
    """Fitted values (+- standard errors) and the residuals of the fit."""

    dark: DarkFit
    read_noise_e: float
    read_noise_se: float
    adu_per_e: float
    adu_per_e_se: float
    energy_kev: float
    energy_se: float | None  # None: given, not fitted
    energy_identifiable: bool
    events: int
    r_data: float
    r_sim: float
    s_data: float
    s_sim: float
    quantile_residuals: list[float] = field(default_factory=list)  # data/sim - 1 at q10..q90 of the cluster charge
    energy_grid: list[tuple[float, float]] = field(default_factory=list)  # (keV, s_sim)

    def lines(self) -> list[str]:
        d = self.dark
        e = (f"energy {self.energy_kev:.0f} +- {self.energy_se:.0f} keV (fitted from the charge-distribution shape)"
             if self.energy_se is not None else f"energy {self.energy_kev:.0f} keV (given)")
        return [f"dark: offset {d.offset:.2f} +- {d.offset_se:.2f} ADU, noise {d.sigma_adu:.3f} +- {d.sigma_se:.3f} "
                f"ADU rms over {d.pixels:,} pixels (Gaussian residual: Kolmogorov distance {d.ks:.4f})",
                f"low dose: {self.events:,} events; signal per event {self.r_data:.2f} dark sigmas (simulation "
                f"{self.r_sim:.2f}), q90/q50 of event charge {self.s_data:.3f} (simulation {self.s_sim:.3f})",
                f"read noise {self.read_noise_e:.2f} +- {self.read_noise_se:.2f} e-, gain {self.adu_per_e:.4f} +- "
                f"{self.adu_per_e_se:.4f} ADU/e-, {e}",
                "residuals of the event-charge quantiles q10..q90 (data / simulation - 1): "
                + ", ".join(f"{v:+.3f}" for v in self.quantile_residuals)]


def fit_dark(dark: np.ndarray) -> DarkFit:
    """Offset and noise (ADU) of dark frames (n, H, W), with standard errors and a Gaussian residual."""
    v = np.asarray(dark, np.float64).ravel()
    if v.size < 100:
        raise ValueError(f"dark frames: {v.size} pixels are too few to measure offset and noise")
    mu, sd = float(v.mean()), float(v.std(ddof=1))
    sample = np.sort(v[:: max(1, v.size // 200_000)])
    cdf = 0.5 * (1 + erf((sample - mu) / (sd * np.sqrt(2))))
    ks = float(np.max(np.abs(cdf - (np.arange(1, len(sample) + 1) - 0.5) / len(sample))))
    return DarkFit(mu, sd / np.sqrt(v.size), sd, sd / np.sqrt(2 * (v.size - 1)), ks, int(v.size))


def event_stats(frames: np.ndarray, offset: float, sigma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per frame: the events' summed charge (dark sigmas) and event count; per event: its frame and
    charge. An event's charge sums its cluster grown by ``GROW`` pixels (the charge below the
    cluster threshold at its rim), never the whole frame: there the offset's own error times ~10^4
    pixels per frame would outweigh the events."""
    z = (np.asarray(frames, np.float32) - np.float32(offset)) / np.float32(sigma)
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = True  # 8-connected within a frame, never across frames
    grown = ndimage.binary_dilation(z > CLUSTER_SIGMA, structure, iterations=GROW)
    lab, n = ndimage.label(grown, structure)
    if not n:
        return np.zeros(len(z)), np.zeros(len(z), np.int64), np.zeros(0, np.int64), np.zeros(0)
    idx = np.arange(1, n + 1)
    peak = np.asarray(ndimage.maximum(z, lab, idx))
    q = np.asarray(ndimage.sum(z, lab, idx))
    frame = np.array([sl[0].start for sl in ndimage.find_objects(lab)], np.int64)
    keep = peak > PEAK_SIGMA
    counts = np.bincount(frame[keep], minlength=len(z)).astype(np.int64)
    total = np.bincount(frame[keep], weights=q[keep], minlength=len(z))
    return total, counts, frame[keep], q[keep]


def _r_s(total, counts, charges) -> tuple[float, float]:
    r = float(total.sum() / max(counts.sum(), 1))
    s = float(np.quantile(charges, 0.9) / np.quantile(charges, 0.5)) if len(charges) > 20 else float("nan")
    return r, s


def _bootstrap(total, counts, frames_of_event, charges, n: int = 100, seed: int = 0) -> tuple[float, float]:
    """Standard errors of (r, s) resampling frames."""
    rng = np.random.default_rng(seed)
    nf = len(total)
    order = np.argsort(frames_of_event, kind="stable")
    starts = np.searchsorted(frames_of_event[order], np.arange(nf + 1))
    rs, ss = [], []
    for _ in range(n):
        pick = rng.integers(0, nf, nf)
        ev = np.concatenate([order[starts[i]:starts[i + 1]] for i in pick]) if len(charges) else np.zeros(0, int)
        r, s = _r_s(total[pick], counts[pick], charges[ev])
        rs.append(r)
        ss.append(s)
    return float(np.std(rs)), float(np.nanstd(ss))


def _stats_with_frames(frames, offset, sigma):
    return event_stats(frames, offset, sigma)


def simulate_reference(values: dict, noise_e: float, rate: float, shape: tuple[int, int], electrons: int,
                       seed: int, library_n: int = 12000, frame_seed: int = 0):
    """A simulated low-dose series of the candidate instrument (gain 1, offset 0, float frames), with
    ~``electrons`` electrons on frames of at most MAX_SIM_PIXELS at the data's occupancy."""
    from .instrument import physics_of, profile_of
    from .physics import load_library
    from .simulate import simulate_frames

    h, w = shape
    if h * w > MAX_SIM_PIXELS:  # same occupancy per pixel on a smaller frame
        rate *= MAX_SIM_PIXELS / (h * w)
        h = w = int(np.sqrt(MAX_SIM_PIXELS))
    n_frames = max(20, int(np.ceil(electrons / max(rate, 0.05))))
    lib = load_library(library_n, seed, physics_of(profile_of(values)))  # one library per instrument (cached)
    fr = simulate_frames(lib, n_frames, h, w, rate=rate, noise_e=noise_e, adu_per_e=1.0, offset=0.0,
                         dtype="<f4", seed=seed + 1 + frame_seed)
    # relative error of the library's mean charge per electron (its events are reused across frames,
    # so a bootstrap over frames does not see it)
    lib_rel = float(lib.charge.std() / lib.charge.mean() / np.sqrt(len(lib)))
    return fr.frames, lib_rel


def calibrate(dark: np.ndarray, flat: np.ndarray, values: dict, fit_energy: bool = False,
              energies=(150.0, 200.0, 250.0, 300.0, 400.0), sim_electrons: int = 12000, iterations: int = 3,
              seed: int = 1000, library_n: int = 12000, log=lambda *_: None) -> Calibration:
    """Fit offset, read noise, gain (and with ``fit_energy`` the beam energy) of a camera.

    ``values``: the rest of the instrument (pixel_um, layer_um, energy_kev as given, ...); ``dark``,
    ``flat``: frames (n, H, W) in ADU, the flat series at low dose (isolated events)."""
    flat = np.asarray(flat)
    if flat.ndim != 3 or flat.shape[0] < 2:
        raise ValueError(f"low-dose frames must be (n, H, W) with n >= 2, got {flat.shape}")
    d = fit_dark(dark)
    total, counts, fev, charges = _stats_with_frames(flat, d.offset, d.sigma_adu)
    if counts.sum() < 200:
        raise ValueError(f"only {counts.sum()} events in the low-dose series: need a few hundred at least")
    r_d, s_d = _r_s(total, counts, charges)
    r_se, s_se = _bootstrap(total, counts, fev, charges)
    rate = counts.sum() / len(counts)
    values = dict(values)
    noise = float(values.get("read_noise_e", 20.0))
    shape = flat.shape[1:]

    lib_rel = [0.0]

    def sim_stats(vals, nse, k):
        fr, lib_rel[0] = simulate_reference(vals, nse, rate, shape, sim_electrons, seed, library_n, 17 * k)
        return _stats_with_frames(fr, 0.0, nse)

    grid: list[tuple[float, float]] = []
    e_se = None
    identifiable = False
    if fit_energy:  # s barely depends on the read noise: fit the energy first at the starting noise
        ss, n_sim = [], []
        for k, e in enumerate(energies):
            t, c, f, q = sim_stats({**values, "energy_kev": e}, noise, 100 + k)
            ss.append(_r_s(t, c, q)[1])
            n_sim.append(len(q))
            log(f"energy {e:.0f} keV: q90/q50 {ss[-1]:.3f} (data {s_d:.3f})")
        grid = list(zip(map(float, energies), map(float, ss)))
        es, sv = np.asarray(energies, float), np.asarray(ss)
        slope = np.polyfit(es, sv, 1)[0]
        # identifiable: the grid's s changes monotonically and by much more than the data's error
        identifiable = bool(np.all(np.diff(sv) * np.sign(slope) > 0) and abs(slope) * (es[-1] - es[0]) > 10 * s_se)
        if identifiable:
            o = np.argsort(sv)
            values["energy_kev"] = float(np.interp(s_d, sv[o], es[o]))
            # the data's bootstrap error and the simulation's (same statistic, scaled by its event count)
            e_se = float(s_se * np.sqrt(1 + len(charges) / np.mean(n_sim)) / abs(slope))
            log(f"energy fitted: {values['energy_kev']:.1f} +- {e_se:.1f} keV")
        else:
            log("energy not identifiable from this series: kept as given")
    tried: list[tuple[float, float]] = []
    for k in range(iterations):
        t, c, f, q = sim_stats(values, noise, k)
        tried.append((np.log(noise), np.log(_r_s(t, c, q)[0])))
        if len(tried) == 1:  # r ~ charge per electron / read noise: scale the noise by the mismatch
            noise *= float(np.exp(tried[0][1] - np.log(r_d)))
        else:  # secant in log-log (the event count also changes with the noise)
            (x0, y0), (x1, y1) = tried[-2:]
            b = (y1 - y0) / (x1 - x0) if abs(x1 - x0) > 1e-6 else -1.0
            noise = float(np.exp(x1 + (np.log(r_d) - y1) / (b if b < -0.2 else -1.0)))
        log(f"iteration {k + 1}: read noise {noise:.3f} e-")
    t, c, f, q = sim_stats(values, noise, iterations)
    r_s_, s_s = _r_s(t, c, q)
    rs_se, _ = _bootstrap(t, c, f, q, seed=1)
    rel = float(np.sqrt((r_se / r_d) ** 2 + (rs_se / r_s_) ** 2 + lib_rel[0] ** 2))
    if e_se is not None:  # charge per electron ~ E^-0.6 (stopping power): a fitted energy's error moves the noise
        rel = float(np.hypot(rel, 0.6 * e_se / values["energy_kev"]))
    noise_se = noise * rel
    gain = d.sigma_adu / noise
    gain_se = gain * float(np.hypot(rel, d.sigma_se / d.sigma_adu))
    qs = np.linspace(0.1, 0.9, 9)
    resid = (np.quantile(charges, qs) / np.quantile(q, qs) - 1).tolist()
    return Calibration(d, noise, noise_se, gain, gain_se, float(values["energy_kev"]), e_se, identifiable,
                       int(counts.sum()), r_d, r_s_, s_d, s_s, [float(v) for v in resid], grid)
