"""Single-electron event physics for a direct electron detector (seed 003, EMSim-like).

Physical model (documented in docs/electron/README.md):

* A 300 keV electron enters the sensor at normal incidence at a continuous point (x0, y0) on the
  top face of a 4 um sensitive (epitaxial) layer of silicon, 5 um pixels (:class:`EventPhysics`).
* It is transported through the layer by a random walk of ``STEP_UM`` steps; each step deflects
  the direction by a Gaussian multiple-Coulomb-scattering angle (Highland width without the log
  term, which is meaningless for sub-um steps) and deposits ionization charge with Landau-like
  (Moyal) fluctuations around the restricted stopping power of silicon (power-law fit of ESTAR:
  0.338 keV/um at 300 keV, ~E^-0.6 within 7% over 50-300 keV), 3.6 eV per electron-hole pair.
* Below the layer is a thick substrate. With probability ``p_backscatter`` (0.15) the electron is
  back-scattered and re-enters the layer from below: lateral offset Rayleigh(``bs_offset_um`` = 6 um)
  from its exit point (truncated at 30 um so the event stays inside the 25x25 stamp), energy uniform
  in ``bs_energy_kev`` (40-220 keV), Lambertian (cos-weighted) direction. Being slower it scatters more and
  ionizes more densely, and its oblique path makes the long, bright tracks whose brightest pixel
  lies away from the entry point. (Substrate transport itself is not simulated: a phenomenological
  choice that reproduces the seed's event sizes, up to ~21x21 pixels.)
* Charge generated at depth z diffuses laterally before collection: Gaussian with
  sigma(z) = ``diff0_um`` + ``diff_slope`` * z (1.0 um + 0.6 z), integrated exactly over the pixels (erf).

Events are simulated once into a *library* of 25x25-pixel stamps (entry point inside the central
pixel at a uniform random sub-pixel offset) with ground truth; frames are built from the library
(:mod:`.simulate`), like the seed's EMSim procedure.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.special import erf

PIXEL_UM = 5.0
LAYER_UM = 4.0
STEP_UM = 0.2
E0_KEV = 300.0
MEC2_KEV = 511.0
X0_UM = 9.37e4  # radiation length of silicon
EV_PER_PAIR = 3.6
STAMP = 25  # stamp side, pixels; the entry pixel is the centre (index 12)
CENTRE = STAMP // 2
LIBRARY_VERSION = 3  # bump when the simulation changes (invalidates cached libraries)


@dataclass(frozen=True)
class EventPhysics:
    """Parameters of the single-electron model (defaults: the documented 300 keV / 4 um sensor)."""

    energy_kev: float = E0_KEV
    layer_um: float = LAYER_UM
    pixel_um: float = PIXEL_UM
    p_backscatter: float = 0.15  # ~ backscatter coefficient of Si at 100-300 keV
    bs_offset_um: float = 6.0
    bs_max_offset_um: float = 30.0
    bs_energy_kev: tuple[float, float] = (40.0, 220.0)
    diff0_um: float = 1.0
    diff_slope: float = 0.6
    moyal_scale: float = 0.25  # relative width of the per-step Landau-like fluctuation
    max_bs_steps: int = 400


def stopping_power_kev_um(e_kev: np.ndarray) -> np.ndarray:
    """Restricted collision stopping power of Si (keV/um), power-law fit to ESTAR 50-300 keV."""
    return 0.338 * np.power(np.maximum(e_kev, 1.0) / 300.0, -0.6)


def scattering_sigma(e_kev: np.ndarray, step_um: float) -> np.ndarray:
    """Projected MCS angle (rad) per step: 13.6 MeV / (beta c p) * sqrt(s / X0)."""
    t = np.maximum(e_kev, 1.0) / 1000.0  # MeV
    pc = np.sqrt(t * t + 2 * t * MEC2_KEV / 1000.0)
    beta = pc / (t + MEC2_KEV / 1000.0)
    return 13.6 / (beta * pc) * np.sqrt(step_um / X0_UM)


def _moyal(rng: np.random.Generator, size, scale: float) -> np.ndarray:
    """Moyal (Landau approximation) variates with mean 1 and width ``scale`` (clipped >= 0)."""
    # Moyal(loc=0, scale=1): X = -ln(Z^2), Z ~ N(0,1); mean = ln2 + euler_gamma
    z = rng.standard_normal(size)
    x = -np.log(np.maximum(z * z, 1e-300))
    mean = np.log(2.0) + np.euler_gamma
    return np.maximum(1.0 + scale * (x - mean), 0.0)


def _rotate(d: np.ndarray, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Deflect unit vectors ``d`` (n,3) by polar angles ``theta`` (n,) at uniform azimuth."""
    phi = rng.uniform(0, 2 * np.pi, len(d))
    # an orthonormal basis (u, v) perpendicular to d
    a = np.where(np.abs(d[:, 2:3]) < 0.9, np.array([[0.0, 0.0, 1.0]]), np.array([[1.0, 0.0, 0.0]]))
    u = np.cross(d, a)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    v = np.cross(d, u)
    st, ct = np.sin(theta)[:, None], np.cos(theta)[:, None]
    out = ct * d + st * (np.cos(phi)[:, None] * u + np.sin(phi)[:, None] * v)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def _walk(pos, d, e, rng, phys: EventPhysics, n_steps: int):
    """Random walk of a batch of electrons; returns deposit points (n, steps, 4: x, y, z, q_e)."""
    n = len(pos)
    out = np.zeros((n, n_steps, 4), np.float32)
    alive = np.ones(n, bool)
    for k in range(n_steps):
        if not alive.any():
            return out[:, :k]
        nxt = pos + STEP_UM * d
        mid = 0.5 * (pos + nxt)
        dep_kev = stopping_power_kev_um(e) * STEP_UM * _moyal(rng, n, phys.moyal_scale)
        dep_kev = np.minimum(dep_kev, np.maximum(e, 0.0))
        q = np.where(alive, dep_kev * 1000.0 / EV_PER_PAIR, 0.0)
        out[:, k, :3] = mid
        out[:, k, 3] = q
        e = e - dep_kev
        pos = nxt
        # space angle of small-angle MCS: Rayleigh with the projected width
        theta = scattering_sigma(e, STEP_UM) * np.sqrt(-2.0 * np.log(1.0 - rng.random(n)))
        d = _rotate(d, theta, rng)
        alive &= (pos[:, 2] >= 0.0) & (pos[:, 2] <= phys.layer_um) & (e > 1.0)
    return out


def simulate_deposits(n: int, rng: np.random.Generator, phys: EventPhysics = EventPhysics()):
    """Charge deposits of ``n`` electrons entering at (0, 0, 0) (um; z down into the sensor).

    Returns ``(deposits (n, P, 4) float32 [x, y, z, electrons], backscattered (n,) bool)``.
    """
    pos = np.zeros((n, 3))
    d = np.tile(np.array([0.0, 0.0, 1.0]), (n, 1))
    e = np.full(n, phys.energy_kev)
    primary_steps = int(np.ceil(phys.layer_um / STEP_UM * 1.5)) + 2
    prim = _walk(pos, d, e, rng, phys, primary_steps)
    # exit point: last in-layer deposit (the primary barely deviates at 300 keV)
    exit_xy = prim[:, -1, :2].astype(float)
    bs = rng.random(n) < phys.p_backscatter
    parts = [prim]
    m = int(bs.sum())
    if m:
        r = phys.bs_offset_um * np.sqrt(-2 * np.log(1 - rng.random(m) * (1 - np.exp(
            -0.5 * (phys.bs_max_offset_um / phys.bs_offset_um) ** 2))))  # truncated Rayleigh
        a = rng.uniform(0, 2 * np.pi, m)
        start = np.column_stack([exit_xy[bs, 0] + r * np.cos(a), exit_xy[bs, 1] + r * np.sin(a),
                                 np.full(m, phys.layer_um - 1e-6)])
        cos_t = np.sqrt(rng.uniform(0.02, 1.0, m))  # Lambertian, upward (-z)
        sin_t = np.sqrt(1 - cos_t ** 2)
        b = rng.uniform(0, 2 * np.pi, m)
        dirs = np.column_stack([sin_t * np.cos(b), sin_t * np.sin(b), -cos_t])
        eb = rng.uniform(*phys.bs_energy_kev, m)
        walk = _walk(start, dirs, eb, rng, phys, phys.max_bs_steps)
        full = np.zeros((n, walk.shape[1], 4), np.float32)
        full[bs] = walk
        parts.append(full)
    return np.concatenate(parts, axis=1), bs


def _pixel_weights(c_px: np.ndarray, s_px: np.ndarray, derivative: bool = False):
    """Fraction of a Gaussian (centre c, sigma s; stamp pixel units) falling in each stamp pixel
    (and, with ``derivative``, its derivative with respect to the centre)."""
    edges = np.arange(STAMP + 1, dtype=np.float32)
    z = (edges[None, None, :] - c_px[..., None]) / s_px[..., None]
    cdf = 0.5 * (1.0 + erf(z / np.sqrt(2.0)))
    w = np.diff(cdf, axis=-1).astype(np.float32)
    if not derivative:
        return w
    pdf = np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi)
    return w, (-np.diff(pdf, axis=-1) / s_px[..., None]).astype(np.float32)


def crb_px(dsx: np.ndarray, dsy: np.ndarray, noise_e: float = 20.0) -> np.ndarray:
    """Cramer-Rao floor sqrt(trace(I^-1)) (pixels) on the entry point of events whose exact charge
    distribution is known, under Gaussian read noise only: I = J^T J / sigma^2, J = d(stamp)/d(x0, y0).
    A floor no estimator reaches (the track shape is random), but the physical limit of read noise."""
    ixx = (dsx * dsx).sum(axis=(1, 2))
    iyy = (dsy * dsy).sum(axis=(1, 2))
    ixy = (dsx * dsy).sum(axis=(1, 2))
    det = np.maximum(ixx * iyy - ixy * ixy, 1e-12)
    return (noise_e * np.sqrt((ixx + iyy) / det)).astype(np.float32)


@dataclass
class EventLibrary:
    """Pre-simulated single-electron events: 25x25 stamps in electrons, entry inside pixel 12.

    ``sub`` (n, 2): entry position (x, y) within the central pixel in [0, 1) (pixel units, from its
    low edge); ``charge`` total collected charge in the stamp (e-); ``track_um`` the largest lateral
    distance from the entry of any deposit; ``backscatter`` whether the electron re-entered;
    ``crb_px`` the read-noise Cramer-Rao floor of its entry point (pixels, sqrt of the trace).
    """

    stamps: np.ndarray
    sub: np.ndarray
    charge: np.ndarray
    track_um: np.ndarray
    backscatter: np.ndarray
    physics: dict
    crb_px: np.ndarray | None = None  # read-noise Cramer-Rao floor (sigma 20 e-), pixels: see crb_px()

    def __len__(self) -> int:
        return len(self.stamps)


def build_library(n: int, seed: int = 0, phys: EventPhysics = EventPhysics(), chunk: int = 2000) -> EventLibrary:
    """Simulate ``n`` events into stamps (vectorized in chunks)."""
    rng = np.random.default_rng(seed)
    stamps = np.zeros((n, STAMP, STAMP), np.float32)
    sub = rng.random((n, 2)).astype(np.float32)
    track = np.zeros(n, np.float32)
    crb = np.zeros(n, np.float32)
    bs_all = np.zeros(n, bool)
    for s in range(0, n, chunk):
        k = min(chunk, n - s)
        dep, bs = simulate_deposits(k, rng, phys)
        q = dep[..., 3]
        keep = q > 0
        dist = np.hypot(dep[..., 0], dep[..., 1])
        track[s:s + k] = np.where(keep, dist, 0).max(axis=1)
        bs_all[s:s + k] = bs
        # stamp coordinates: pixel i spans [i, i+1); the entry is at CENTRE + sub
        cx = CENTRE + sub[s:s + k, 0:1] + dep[..., 0] / phys.pixel_um
        cy = CENTRE + sub[s:s + k, 1:2] + dep[..., 1] / phys.pixel_um
        sig = (phys.diff0_um + phys.diff_slope * np.clip(dep[..., 2], 0, phys.layer_um)) / phys.pixel_um
        # only points with charge matter; compress to the max count per chunk to save work
        order = np.argsort(~keep, axis=1, kind="stable")
        p = int(keep.sum(axis=1).max())
        take = lambda a: np.take_along_axis(a, order[:, :p], axis=1)  # noqa: E731
        cx, cy, sig, qq = take(cx), take(cy), take(sig), take(q)
        wx, dwx = _pixel_weights(cx, sig, derivative=True)  # (k, p, STAMP)
        wy, dwy = _pixel_weights(cy, sig, derivative=True)
        stamps[s:s + k] = np.einsum("kp,kpj,kpi->kij", qq, wx, wy, optimize=True)
        # every deposit moves with the entry point: d(stamp)/dx0 sums the deposits' derivatives
        dsx = np.einsum("kp,kpj,kpi->kij", qq, dwx, wy, optimize=True)
        dsy = np.einsum("kp,kpj,kpi->kij", qq, wx, dwy, optimize=True)
        crb[s:s + k] = crb_px(dsx, dsy)
    charge = stamps.sum(axis=(1, 2))
    return EventLibrary(stamps, sub, charge.astype(np.float32), track, bs_all, asdict(phys), crb)


def cache_dir() -> Path:
    return Path(os.environ.get("STREAMER_CACHE", Path.home() / ".cache" / "streamer")) / "electron"


def load_library(n: int = 20000, seed: int = 0, phys: EventPhysics = EventPhysics()) -> EventLibrary:
    """A library from the on-disk cache, simulated (and cached) on first use."""
    key = hashlib.sha256(repr((LIBRARY_VERSION, n, seed, sorted(asdict(phys).items()))).encode()).hexdigest()[:12]
    path = cache_dir() / f"library-{n}-{seed}-{key}.npz"
    if path.is_file():
        try:
            z = np.load(path, allow_pickle=False)
            return EventLibrary(z["stamps"], z["sub"], z["charge"], z["track_um"], z["backscatter"], asdict(phys),
                                z["crb_px"])
        except Exception:  # corrupt cache: rebuild
            pass
    lib = build_library(n, seed, phys)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, stamps=lib.stamps, sub=lib.sub, charge=lib.charge, track_um=lib.track_um,
             backscatter=lib.backscatter, crb_px=lib.crb_px)
    os.replace(tmp, path)
    return lib
