"""Training/evaluation data for the trained models: simulation, regime filters, grouped splits.

Splits are always by ruler/trace (``trace_id``), never by tuple: tuples of one ruler share
its distance, orientation, background and brightness, so a per-tuple split leaks them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .recording import Recording
from .simulate import STATE_TWO, simulate


@dataclass
class DataConfig:
    """What to simulate for one regime (defaults: the sizes ``streamer train`` uses)."""

    regime: str = "static"
    n_groups: int = 45000  # rulers (static) or traces (dynamic)
    tuples_per_group: int = 80
    seed: int = 20261123
    # fractions of groups for early-stopping validation and conformal calibration; the rest trains
    val_fraction: float = 0.3  # also fits the de-shrinking map and the photon exponent
    cal_fraction: float = 0.2

    def to_dict(self) -> dict:
        return asdict(self)


def two_emitter_tuples(rec: Recording) -> Recording:
    """The tuples that carry a distance (two emitters on); all of them when no state is known."""
    return rec.subset(rec.truth["state"] == STATE_TWO) if "state" in rec.truth else rec


def simulate_regime(regime: str, n_groups: int, tuples_per_group: int, seed: int) -> Recording:
    """Simulate a regime and keep the tuples that carry a distance (two emitters on)."""
    return two_emitter_tuples(simulate(regime, n_groups, tuples_per_group, seed))


def group_split(trace_id: np.ndarray, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Boolean masks, one per fraction plus one for the remainder, assigning whole groups.

    Groups are shuffled with ``seed`` and cut by cumulative fraction of groups, so no group
    appears in two parts.
    """
    if any(f < 0 for f in fractions) or sum(fractions) >= 1.0:
        raise ValueError(f"fractions must be >= 0 and sum to < 1, got {fractions}")
    groups = np.unique(trace_id)
    if len(groups) < len(fractions) + 1:
        raise ValueError(f"need at least {len(fractions) + 1} groups to split, got {len(groups)}")
    order = np.random.default_rng(seed).permutation(groups)
    cuts = np.round(np.cumsum(fractions) * len(groups)).astype(int)
    # every part gets at least one group
    cuts = np.maximum(cuts, np.arange(1, len(cuts) + 1))
    parts = np.split(order, cuts)
    return [np.isin(trace_id, part) for part in parts]


def class_balance_weights(labels: np.ndarray) -> np.ndarray:
    """Per-sample weights giving every distinct label the same total weight (mean weight 1)."""
    values, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    w = (len(labels) / (len(values) * counts))[inverse]
    return w.astype(np.float32)
