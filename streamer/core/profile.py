"""Instrument profiles: one small TOML file per instrument with a modality's physical parameters.

A modality declares its parameters (:class:`ProfileParam`: unit, nominal value, physically possible
range, and the packet header field that carries it per packet, if any). A profile gives values for
them and says where each came from (``provenance``: "nominal", "calibrate beads.tif 2026-11-29", a
person's note). Model bundles record the profile they were trained for and the parameter ranges they
cover (:class:`Coverage`); workers compare every stream's profile and in-packet parameters with that
and flag what lies outside instead of answering confidently for another instrument.

File format (``streamer profile new --modality smlm3d scope-b.toml`` writes one)::

    modality = "smlm3d"
    name = "scope-b"
    description = "Nikon Ti2, 100x/1.49, astigmatic lens; beads 2026-11-29"

    [values]
    pixel_nm = 108.0
    ...

    [provenance]
    pixel_nm = "camera datasheet"
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

NOMINAL = "nominal"


class ProfileError(ValueError):
    """A profile file that cannot be used, with a message naming the file and the key."""


@dataclass(frozen=True)
class ProfileParam:
    """One physical parameter of a modality's instrument."""

    name: str
    unit: str
    nominal: float  # the simulator's default instrument
    lo: float  # physically possible range: values outside are errors, not mismatches
    hi: float
    #: packet header field carrying this parameter per packet (checked per packet against the bundle)
    header: str | None = None
    #: a bundle trained for value v covers [v * (1 - tol), v * (1 + tol)] (relative) unless it says more
    tol: float = 0.05
    #: absolute tolerance, for parameters whose nominal value may be 0 (offsets, baselines)
    atol: float = 0.0
    doc: str = ""

    def around(self, value: float) -> tuple[float, float]:
        """The range a bundle trained at exactly ``value`` covers."""
        d = abs(value) * self.tol + self.atol
        return value - d, value + d


@dataclass(frozen=True)
class InstrumentProfile:
    modality: str
    name: str
    values: Mapping[str, float]
    provenance: Mapping[str, str] = field(default_factory=dict)
    description: str = ""

    @property
    def hash(self) -> str:
        """Content hash (modality + values): what bundles and results record."""
        canon = json.dumps({"modality": self.modality, "values": {k: float(v) for k, v in sorted(self.values.items())}},
                           sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()[:12]

    def __getitem__(self, key: str) -> float:
        return float(self.values[key])

    def with_values(self, values: Mapping[str, float], source: str, name: str | None = None) -> "InstrumentProfile":
        """A copy with some values replaced (``source`` becomes their provenance)."""
        return InstrumentProfile(self.modality, name or self.name, {**self.values, **{k: float(v) for k, v in values.items()}},
                                 {**self.provenance, **{k: source for k in values}}, self.description)

    def to_toml(self) -> str:
        lines = [f"modality = {_q(self.modality)}", f"name = {_q(self.name)}"]
        if self.description:
            lines.append(f"description = {_q(self.description)}")
        lines += ["", f"# hash {self.hash} (recorded by the bundles trained for this profile)", "[values]"]
        lines += [f"{k} = {float(v)!r}" for k, v in self.values.items()]
        lines += ["", "[provenance]"] + [f"{k} = {_q(v)}" for k, v in self.provenance.items()]
        return "\n".join(lines) + "\n"

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_toml())
        tmp.replace(path)
        return path

    def summary(self, params: tuple[ProfileParam, ...] = ()) -> str:
        units = {p.name: p.unit for p in params}
        rows = [f"{self.modality} instrument {self.name!r} (hash {self.hash})"]
        if self.description:
            rows.append(f"  {self.description}")
        width = max((len(k) for k in self.values), default=0)
        for k, v in self.values.items():
            rows.append(f"  {k:<{width}} = {v:<12g} {units.get(k, ''):<10} ({self.provenance.get(k, '?')})")
        return "\n".join(rows)


def _q(text: str) -> str:
    return json.dumps(str(text))  # a TOML basic string is a JSON string for what we write


def add_output_arguments(p) -> None:
    """The options every ``streamer calibrate --modality NAME`` shares: where the fitted profile goes
    and what it starts from."""
    p.add_argument("--out", required=True, help="instrument profile to write (.toml)")
    p.add_argument("--name", default=None, help="instrument name (default: the output file's stem)")
    p.add_argument("--base", default=None, metavar="PROFILE.toml",
                   help="start from this profile (default: the nominal instrument); fitted values replace its own")
    p.add_argument("--force", action="store_true", help="overwrite --out")


def from_values(modality: str, params: tuple[ProfileParam, ...], values: Mapping[str, float], name: str = "trained",
                source: str = "bundle") -> InstrumentProfile:
    """A profile of ``modality`` from ``values`` (missing parameters: nominal), all from ``source``."""
    return InstrumentProfile(modality, name, {p.name: float(values.get(p.name, p.nominal)) for p in params},
                             {p.name: source for p in params})


def declared(modality) -> tuple[ProfileParam, ...]:
    params = tuple(getattr(modality, "profile", ()) or ())
    if not params:
        raise ProfileError(f"modality {modality.name!r} declares no instrument parameters")
    return params


def nominal(modality, name: str = NOMINAL) -> InstrumentProfile:
    """The simulator's default instrument of ``modality``."""
    params = declared(modality)
    return InstrumentProfile(modality.name, name, {p.name: float(p.nominal) for p in params},
                             {p.name: NOMINAL for p in params}, f"the {modality.name} simulator's default instrument")


def parse(text: str, modality_lookup, source: str = "<profile>") -> InstrumentProfile:
    """Profile from TOML text; ``modality_lookup(name) -> Modality`` (the registry's ``get``).

    Every problem is a :class:`ProfileError` naming ``source`` and the key: TOML syntax, unknown
    modality, unknown or missing parameters, non-numbers, non-finite values, values outside the
    physically possible range. Parameters the file leaves out take the nominal value (provenance
    "nominal") -- a new profile needs only what differs."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{source}: not valid TOML: {exc}") from None
    unknown_top = set(doc) - {"modality", "name", "description", "values", "provenance"}
    if unknown_top:
        raise ProfileError(f"{source}: unknown keys {sorted(unknown_top)} (expected modality, name, description, "
                           f"[values], [provenance])")
    mod_name = doc.get("modality")
    if not isinstance(mod_name, str):
        raise ProfileError(f"{source}: 'modality' must name the kind of acquisition (a string)")
    try:
        modality = modality_lookup(mod_name)
    except (KeyError, ValueError) as exc:
        raise ProfileError(f"{source}: {exc}") from None
    params = {p.name: p for p in declared(modality)}
    name = doc.get("name", Path(source).stem)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.+-]{1,64}", name):
        raise ProfileError(f"{source}: 'name' must be 1-64 letters, digits or _.+- (got {name!r})")
    values = doc.get("values", {})
    prov = doc.get("provenance", {})
    if not isinstance(values, dict) or not isinstance(prov, dict):
        raise ProfileError(f"{source}: [values] and [provenance] must be tables")
    unknown = set(values) - set(params)
    if unknown:
        raise ProfileError(f"{source}: unknown {mod_name} parameters {sorted(unknown)}; known: {', '.join(params)}")
    out: dict[str, float] = {}
    for key, p in params.items():
        v = values.get(key, p.nominal)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ProfileError(f"{source}: values.{key} must be a number ({p.unit}), got {v!r}")
        v = float(v)
        if not math.isfinite(v) or not (p.lo <= v <= p.hi):
            raise ProfileError(f"{source}: values.{key} = {v:g} {p.unit} is outside the possible range "
                               f"[{p.lo:g}, {p.hi:g}] {p.unit} ({p.doc or key})")
        out[key] = v
    provenance = {k: str(prov.get(k, "file" if k in values else NOMINAL)) for k in params}
    return InstrumentProfile(mod_name, name, out, provenance, str(doc.get("description", "")))


def load(path: str | Path, modality_lookup) -> InstrumentProfile:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ProfileError(f"cannot read profile {path}: {exc.strerror}") from None
    return parse(text, modality_lookup, str(path))


# --------------------------------------------------------------------------- coverage


@dataclass(frozen=True)
class Coverage:
    """What a model bundle covers: {parameter: (lo, hi)} and the profile it was trained for."""

    modality: str
    ranges: Mapping[str, tuple[float, float]]
    profile: str = NOMINAL
    profile_hash: str = ""

    @classmethod
    def around(cls, profile: InstrumentProfile, params: tuple[ProfileParam, ...],
               wider: Mapping[str, tuple[float, float]] | None = None) -> "Coverage":
        """A bundle trained at ``profile`` (each parameter within its tolerance), or over the
        ``wider`` ranges where the training data varied a parameter."""
        ranges = {p.name: tuple(map(float, (wider or {}).get(p.name, p.around(profile[p.name])))) for p in params}
        return cls(profile.modality, ranges, profile.name, profile.hash)

    def to_manifest(self) -> dict[str, Any]:
        return {"profile": self.profile, "hash": self.profile_hash,
                "covers": {k: [lo, hi] for k, (lo, hi) in self.ranges.items()}}

    @classmethod
    def from_manifest(cls, modality: str, entry: Mapping[str, Any]) -> "Coverage":
        return cls(modality, {k: (float(lo), float(hi)) for k, (lo, hi) in entry["covers"].items()},
                   entry.get("profile", "?"), entry.get("hash", ""))

    def outside(self, values: Mapping[str, float]) -> list[str]:
        """The parameters of ``values`` this bundle does not cover, as readable phrases."""
        out = []
        for k, v in values.items():
            if k in self.ranges:
                lo, hi = self.ranges[k]
                if not (lo <= float(v) <= hi):
                    out.append(f"{k}={float(v):g} not in [{lo:g}, {hi:g}]")
        return out


def mark_mismatch(out: dict, spec, rows: int, detections: int | None) -> int:
    """Flag a whole packet's results as outside what the model covers: the modality's mismatch flag
    set, every declared interval NaN (no interval is better than a confident wrong one). Returns the
    number of items (or detections) flagged."""
    for name in spec.intervals:
        if name in out:
            out[name] = np.full(np.shape(out[name]), np.nan, np.result_type(np.asarray(out[name]).dtype, np.float32))
    if spec.mismatch_flag and "flags" in out:
        out["flags"] = np.asarray(out["flags"], np.uint8) | np.uint8(spec.mismatch_flag)
    per_detection = "flags" in {a.name for a in spec.detections}
    return int(detections if per_detection and detections is not None else rows)
