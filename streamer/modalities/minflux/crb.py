"""Cramer-Rao bound on the separation from the per-tuple Poisson Fisher information."""

from __future__ import annotations

import numpy as np

from . import physics
from .estimators import poisson_model as pm

#: the information on d_a vanishes at d_a = 0 (d cos/dd = 0); the bound on d stays finite
#: in the limit, so evaluate just off it
MIN_AXIS_NM = 0.05


def crb_distance(
    d_nm: np.ndarray,
    theta: np.ndarray,
    amplitude: np.ndarray,
    mid_nm: np.ndarray,
    positions: np.ndarray,
    background: np.ndarray | float,
    v0: np.ndarray | float,
) -> np.ndarray:
    """(n,) lower bound on the standard deviation of any unbiased per-tuple estimate of d.

    amplitude is the per-emitter brightness A, mid_nm (n, 2) the pair midpoint relative to the
    middle exposure, positions (n, 2, 3) the beam positions; background/v0 per tuple or scalar.
    """
    d_nm = np.asarray(d_nm, float)
    d_axes = np.clip(physics.projected_separation(d_nm, np.asarray(theta, float)), MIN_AXIS_NM, None)
    params = np.column_stack([np.log(amplitude), d_axes, mid_nm])
    a = physics.a_from_v0(v0)
    mu, J = pm.model(params, pm.relative_offsets(positions), a, background)
    info = pm.fisher_information(mu, J)
    d = np.hypot(d_axes[:, 0], d_axes[:, 1])
    grad = np.zeros((len(d), pm.N_PARAMS))
    grad[:, 1:3] = d_axes / d[:, None]
    var = np.einsum("ni,ni->n", grad, np.linalg.solve(info, grad[:, :, None])[:, :, 0])
    return np.sqrt(var)


def crb_for_recording(truth: dict[str, np.ndarray], positions: np.ndarray) -> np.ndarray:
    """CRB per tuple from simulator ground truth (equal-brightness model at the true parameters)."""
    # the model's A is per emitter; with unequal brightness use the pair's mean brightness
    amp = truth["amplitude"] * (1.0 + truth["g2"]) / 2.0
    return crb_distance(truth["d_nm"], truth["theta"], amp, truth["mid_nm"], positions,
                        truth["background"], truth["v0"])
