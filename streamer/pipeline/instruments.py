"""Which predictor serves a packet, and whether its model covers the packet's instrument.

A worker knows some instrument profiles (``streamer worker --instrument scope-b.toml``, repeatable;
the first of a modality is that modality's default for packets that name none). For each profile it
serves the bundle trained for it (found by profile hash under the models directory, through the
predictor's ``from_bundle``), or else its default predictor. Every packet is then checked: the
profile's values and the packet's own header parameters (``pixel_nm``, ``frame_s``, ...) against the
serving model's coverage. Outside it, results keep their point estimates but lose their intervals and
carry the modality's mismatch flag, counted under ``instrument-mismatch`` (or ``instrument-unknown``
for a packet naming a profile this worker was not given) -- never a confident answer for another
instrument. The profile that applies is handed to the predictor as ``packet.extra["profile"]``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..core import profile as prof
from ..core.modality import Modality, Packet, Predictor

MISMATCH, UNKNOWN = "instrument-mismatch", "instrument-unknown"


@dataclass
class Route:
    predictor: Predictor
    problems: list[str]
    reason: str | None  # None: covered


def find_bundle(models_dir: Path, modality: str, profile_hash: str) -> Path | None:
    """The bundle directory under ``models_dir/<modality>/`` trained for ``profile_hash`` (newest)."""
    hits = []
    for manifest in (Path(models_dir) / modality).glob("*/manifest.json"):
        try:
            entry = json.loads(manifest.read_text()).get("instrument") or {}
        except (OSError, ValueError):
            continue
        if entry.get("hash") == profile_hash:
            hits.append(manifest.parent)
    return max(hits, key=lambda p: p.stat().st_mtime) if hits else None


def coverage_of(predictor: Predictor, modality: Modality) -> prof.Coverage | None:
    """The predictor's own coverage, or (declared parameters, no record) the nominal instrument."""
    cov = getattr(predictor, "coverage", None)
    if cov is not None or not modality.profile:
        return cov
    return prof.Coverage.around(prof.nominal(modality), modality.profile)


class Instruments:
    """Per modality: known profiles -> (predictor, coverage); routes and checks each packet."""

    def __init__(self, modalities: dict[str, Modality], predictors: dict[str, Predictor], names: dict[str, str],
                 profiles: list[prof.InstrumentProfile] = (), models_dir: Path | None = None):
        from ..core.model_bundle import DEFAULT_MODELS_DIR

        models_dir = Path(models_dir or DEFAULT_MODELS_DIR)
        self.modalities = modalities
        self.default = predictors  # the worker's own dict: swapping a predictor there swaps it here
        self.profiles: dict[str, dict[str, tuple[prof.InstrumentProfile, Predictor]]] = {m: {} for m in modalities}
        self.default_profile: dict[str, prof.InstrumentProfile] = {}
        self.loaded: list[str] = []
        for p in profiles:
            if p.modality not in modalities:
                raise ValueError(f"profile {p.name!r} is for {p.modality}; this worker serves {', '.join(modalities)}")
            spec = modalities[p.modality].predictor(names[p.modality])
            bundle = find_bundle(models_dir, p.modality, p.hash) if spec.from_bundle else None
            predictor = spec.from_bundle(bundle) if bundle is not None else predictors[p.modality]
            self.loaded.append(f"{p.modality}/{p.name} -> " + (str(bundle) if bundle else "default model"))
            self.profiles[p.modality][p.name] = (p, predictor)
            self.default_profile.setdefault(p.modality, p)
        self._coverage: dict[int, tuple[Predictor, prof.Coverage | None]] = {}

    def coverage(self, predictor: Predictor, modality: Modality) -> prof.Coverage | None:
        hit = self._coverage.get(id(predictor))
        if hit is None or hit[0] is not predictor:  # (the predictor is kept so its id cannot be reused)
            hit = self._coverage[id(predictor)] = (predictor, coverage_of(predictor, modality))
        return hit[1]

    def route(self, packet: Packet) -> Route:
        mod = self.modalities[packet.modality]
        if not mod.profile:  # a modality without instrument parameters: nothing to compare
            return Route(self.default[packet.modality], [], None)
        named = packet.extra.get("instrument")
        known = self.profiles.get(packet.modality, {})
        if named is not None and named not in known:
            return Route(self.default[packet.modality], [f"instrument {named!r} is not among this worker's profiles "
                                                         f"({', '.join(known) or 'none given'})"], UNKNOWN)
        if named is not None:
            profile, predictor = known[named]
        elif packet.modality in self.default_profile:
            profile = self.default_profile[packet.modality]
            predictor = known[profile.name][1]
        else:
            profile, predictor = None, self.default[packet.modality]
        if profile is not None:  # predictors may use the user's calibration (e.g. MINFLUX v0, background)
            packet.extra["profile"] = profile
        cov = self.coverage(predictor, mod)
        if cov is None:
            return Route(predictor, [], None)
        values = dict(profile.values) if profile is not None else {}
        values.update({p.name: packet.header[p.header] for p in mod.profile
                       if p.header and packet.header.get(p.header) is not None})
        problems = cov.outside(values)
        return Route(predictor, problems, MISMATCH if problems else None)
