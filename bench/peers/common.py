"""What the peer scripts share: versions for their tables, and the peer virtualenvs (Picasso, pyMINFLUX)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


def ours_version() -> str:
    """Package version + git revision of the working tree (the bundle id travels in the model_id)."""
    rev = "?"
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        pass
    return f"minflux-streamer {dist_version('minflux-streamer')} @ {rev}"


def peer_python(env_var: str, venv: str) -> Path:
    """A peer's interpreter: ``$env_var`` or ``ROOT/venv/bin/python``."""
    return Path(os.environ.get(env_var, ROOT / venv / "bin" / "python"))


def peer_available(env_var: str, venv: str, imports: str) -> bool:
    """True when the peer interpreter exists and ``import <imports>`` works there."""
    py = peer_python(env_var, venv)
    if not py.is_file():
        return False
    r = subprocess.run([str(py), "-c", f"import {imports}"], capture_output=True,
                       env=dict(os.environ, QT_QPA_PLATFORM="offscreen"))
    return r.returncode == 0
