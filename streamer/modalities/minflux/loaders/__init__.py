"""Recorded data from real instruments -> :class:`~streamer.recording.Recording` (the replay format).

``load_any(path)`` picks the loader from the file type:
  folder or ``*.pkl``  -> Hensel et al. ``parsed.pkl`` (:mod:`.hensel`)
  ``*.npy`` / ``*.mat`` -> Abberior Imspector MINFLUX export (:mod:`.abberior`)
  ``*.npz``            -> an existing replay recording (:func:`~streamer.recording.load_recording`)
"""

from __future__ import annotations

from pathlib import Path

from ..recording import Recording, load_recording
from .abberior import load_abberior
from .hensel import load_hensel

FORMATS = ("auto", "hensel", "abberior", "replay")


def detect_format(path: str | Path) -> str:
    """The loader name for ``path``; ValueError for anything unsupported."""
    path = Path(path)
    if path.is_dir():
        return "hensel"
    suffix = path.suffix.lower()
    if suffix == ".pkl":
        return "hensel"
    if suffix in (".npy", ".mat"):
        return "abberior"
    if suffix == ".npz":
        return "replay"
    raise ValueError(f"{path}: cannot tell the format from '{suffix or path.name}'; supported: a folder or "
                     f".pkl (Hensel parsed.pkl), .npy/.mat (Abberior export), .npz (replay); or pass --format")


def load_any(path: str | Path, fmt: str = "auto", **options) -> Recording:
    """Load ``path`` as a Recording. ``options`` go to the chosen loader (see :func:`load_with_report`)."""
    return load_with_report(path, fmt, **options)[0]


def load_with_report(path: str | Path, fmt: str = "auto", **options) -> tuple[Recording, dict]:
    """Like :func:`load_any` but also returns what was kept/dropped (for the CLI summary).

    Hensel options: states, two_emitter_only, distance_nm, pos_unit.
    Abberior options: counts_field, half_l_nm, distance_nm.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {FORMATS}")
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "hensel":
        rec, report = load_hensel(path, **options)
        return rec, report.as_meta()
    if fmt == "abberior":
        return load_abberior(path, **options)
    if options:
        raise ValueError(f"options {sorted(options)} do not apply to a replay recording")
    rec = load_recording(path)
    return rec, {"kept": len(rec)}


__all__ = ["FORMATS", "detect_format", "load_any", "load_with_report", "load_hensel", "load_abberior"]
