"""Frame simulator: emitters (CSR or on microtubule-like three-helix filaments) -> camera frames.

Geometry: pixel j spans [j, j+1) * pixel_nm; positions are nm from the frame's top-left corner,
x along columns, y along rows, z in [-750, 750] nm (seed 002 / SMLM Challenge 2016).
Camera: photons ~ Poisson(mu) (optionally EMCCD gain register: Gamma(n, 1), excess noise factor 2),
ADU = baseline + adu_per_photon * electrons + N(0, read_noise), rounded and clipped to uint16.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .psf import DEFAULT_PSF, Z_RANGE_NM, AstigmaticPSF, integrated_1d

#: seed 002 SNR levels: mean photons per emitter, background photons per pixel
SNR_LEVELS: dict[str, tuple[float, float]] = {"1k/10": (1000.0, 10.0), "5k/50": (5000.0, 50.0),
                                              "20k/200": (20000.0, 200.0)}
#: seed 002 nominal densities (emitters per 64x64 frame), a subset of the nine levels 0.38-13
DENSITIES = (0.38, 1.0, 2.0, 5.0, 13.0)


@dataclass
class Camera:
    baseline: float = 100.0
    adu_per_photon: float = 1.0
    read_noise: float = 1.5  # ADU rms
    emccd: bool = False


@dataclass
class SimConfig:
    n_frames: int = 100
    height: int = 64
    width: int = 64
    pixel_nm: float = 100.0
    photons: float = 5000.0
    background: float = 50.0
    density: float = 2.0            # mean emitters per frame (Poisson)
    sampling: str = "csr"           # "csr" | "structure"
    structure_every: int = 1        # frames per random structure (1 = new filaments every frame)
    photon_spread: float = 0.5      # photons ~ mean * U(1 - spread, 1 + spread)
    margin_px: float = 3.0          # emitters >= this far from the frame edge (truncated PSFs aside)
    psf: AstigmaticPSF = field(default_factory=lambda: DEFAULT_PSF)
    camera: Camera = field(default_factory=Camera)
    seed: int = 0


def filament_cloud(rng: np.random.Generator, extent_nm: tuple[float, float], n_filaments: int,
                   seeds_per_filament: int = 5000, radius_nm: float = 12.5, pitch_nm: float = 120.0,
                   margin_nm: float = 0.0) -> np.ndarray:
    """Point cloud (K, 3) of ``n_filaments`` random three-helix microtubule-like filaments.

    Each filament's axis is a smooth random 3D curve crossing the field of view (end points on
    opposite sides, low-frequency lateral and axial wiggles, |z| <= 750 nm); three helical
    strands 120 deg apart wind around it at ``radius_nm`` (a microtubule's 25 nm diameter).
    """
    H, W = extent_nm
    pts = []
    for _ in range(n_filaments):
        ang = rng.uniform(0, np.pi)
        centre = rng.uniform([0.2 * W, 0.2 * H], [0.8 * W, 0.8 * H])
        half = 0.75 * np.hypot(H, W)
        d = np.array([np.cos(ang), np.sin(ang)])
        t = np.sort(rng.uniform(0, 1, seeds_per_filament))
        axis_xy = centre + (2 * t[:, None] - 1) * half * d
        normal = np.array([-d[1], d[0]])
        wiggle = sum(rng.normal(0, 400) * np.sin(2 * np.pi * (k * t + rng.uniform())) for k in (1, 2))
        axis_xy = axis_xy + wiggle[:, None] * normal
        z0, z1 = rng.uniform(-750, 750, 2)
        az = z0 + (z1 - z0) * t + rng.uniform(-200, 200) * np.sin(2 * np.pi * (t + rng.uniform()))
        # fold back into [-750, 750] (a clip would pile emitters up at the bounds)
        az = np.abs(np.mod(az + 750.0, 3000.0) - 1500.0) - 750.0
        # helix around the (mostly lateral) axis: offsets along the in-plane normal and z
        strand = rng.integers(0, 3, seeds_per_filament)
        phase = 2 * np.pi * (t * 2 * half / pitch_nm + strand / 3.0)
        off_n, off_z = radius_nm * np.cos(phase), radius_nm * np.sin(phase)
        off_z = np.where(np.abs(az + off_z) > 750.0, -off_z, off_z)
        xy = axis_xy + off_n[:, None] * normal
        pts.append(np.column_stack([xy, az + off_z]))
    cloud = np.concatenate(pts)
    inside = ((cloud[:, 0] >= margin_nm) & (cloud[:, 0] < W - margin_nm)
              & (cloud[:, 1] >= margin_nm) & (cloud[:, 1] < H - margin_nm))
    return cloud[inside]


def sample_emitters(cfg: SimConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-emitter truth: item (frame index), x, y, z (nm), photons."""
    counts = rng.poisson(cfg.density, cfg.n_frames)
    item = np.repeat(np.arange(cfg.n_frames, dtype=np.int32), counts)
    m = len(item)
    H, W = cfg.height * cfg.pixel_nm, cfg.width * cfg.pixel_nm
    mg = cfg.margin_px * cfg.pixel_nm
    if cfg.sampling == "csr":
        xyz = np.column_stack([rng.uniform(mg, W - mg, m), rng.uniform(mg, H - mg, m),
                               rng.uniform(*Z_RANGE_NM, m)])
    elif cfg.sampling == "structure":
        xyz = np.empty((m, 3))
        every = max(1, int(cfg.structure_every))
        for start in range(0, cfg.n_frames, every):
            sel = (item >= start) & (item < start + every)
            k = int(sel.sum())
            if not k:
                continue
            cloud = filament_cloud(rng, (H, W), int(rng.integers(1, 4)), margin_nm=mg)
            xyz[sel] = cloud[rng.integers(0, len(cloud), k)]
    else:
        raise ValueError(f"unknown sampling {cfg.sampling!r} (csr | structure)")
    photons = cfg.photons * rng.uniform(1 - cfg.photon_spread, 1 + cfg.photon_spread, m)
    return {"item": item, "x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2], "photons": photons}


def render(truth: dict[str, np.ndarray], n_frames: int, height: int, width: int, pixel_nm: float,
           background: np.ndarray | float, psf: AstigmaticPSF = DEFAULT_PSF) -> np.ndarray:
    """Expected photons per pixel (n, H, W): background + sum of pixel-integrated PSFs.

    Emitters are grouped per frame and padded to the per-frame maximum K, so a frame is one batched
    (H, K) @ (K, W) product instead of a Python loop over emitters.
    """
    item = truth["item"]
    bg = np.broadcast_to(np.asarray(background, np.float64), (n_frames,))
    mu = np.repeat(bg[:, None, None], height, 1).repeat(width, 2)
    if len(item) == 0:
        return mu
    sx, sy, _, _ = psf.sigmas(truth["z"])
    Ex = integrated_1d(truth["x"] / pixel_nm, sx / pixel_nm, width)
    Ey = integrated_1d(truth["y"] / pixel_nm, sy / pixel_nm, height) * truth["photons"][:, None]
    order = np.argsort(item, kind="stable")
    counts = np.bincount(item, minlength=n_frames)
    K = int(counts.max())
    slot = np.arange(len(item)) - np.repeat(np.cumsum(counts) - counts, counts)
    ex = np.zeros((n_frames, K, width))
    ey = np.zeros((n_frames, K, height))
    ex[item[order], slot] = Ex[order]
    ey[item[order], slot] = Ey[order]
    return mu + np.einsum("nki,nkj->nij", ey, ex, optimize=True)


def camera_frames(mu: np.ndarray, cam: Camera, rng: np.random.Generator) -> np.ndarray:
    """Shot noise (+ EMCCD excess noise) + read noise -> uint16 ADU frames."""
    e = rng.poisson(mu).astype(np.float64)
    if cam.emccd:
        pos = e > 0
        e[pos] = rng.gamma(e[pos], 1.0)  # gain register: Gamma(n, G)/G, excess noise factor 2
    adu = cam.baseline + cam.adu_per_photon * e + rng.normal(0, cam.read_noise, e.shape)
    return np.clip(np.rint(adu), 0, 65535).astype(np.uint16)


def simulate_frames(cfg: SimConfig) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Frames (n, H, W) uint16 and truth (per emitter + per-frame ``background``)."""
    rng = np.random.default_rng(cfg.seed)
    truth = sample_emitters(cfg, rng)
    bg = np.full(cfg.n_frames, cfg.background)
    mu = render(truth, cfg.n_frames, cfg.height, cfg.width, cfg.pixel_nm, bg, cfg.psf)
    frames = camera_frames(mu, cfg.camera, rng)
    truth["background"] = bg
    return frames, truth
