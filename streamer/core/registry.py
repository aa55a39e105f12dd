"""Which modalities are installed: entry points, plus plug-ins named in ``STREAMER_MODALITIES``.

A package adds a modality by declaring an entry point in the group ``streamer.modalities`` that
points at its :class:`~streamer.core.modality.Modality` object::

    [project.entry-points."streamer.modalities"]
    mymod = "my_package.mymod:MODALITY"

``STREAMER_MODALITIES="module:attr,other.module:attr"`` adds modalities without installing a
package (used by tests and during development; worker processes inherit it). Core never imports
a modality by name: everything goes through this lookup, loaded lazily on first use.
"""

from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points

from .modality import Modality
from .wire import REASONS

GROUP = "streamer.modalities"
ENV = "STREAMER_MODALITIES"
DEFAULT_MODALITY = "minflux"

_loaded: dict[str, Modality] = {}
_sources: dict[str, str] | None = None


def _load_target(target: str) -> Modality:
    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    for part in (attr or "MODALITY").split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, Modality):
        raise TypeError(f"{target} is a {type(obj).__name__}, not a streamer Modality")
    return obj


def _discover() -> dict[str, str]:
    """name -> 'module:attr' of every modality that can be loaded (nothing imported yet)."""
    global _sources
    if _sources is None:
        found = {ep.name: ep.value for ep in entry_points(group=GROUP)}
        for target in filter(None, (t.strip() for t in os.environ.get(ENV, "").split(","))):
            found[_name_of(target)] = target
        _sources = found
    return _sources


def _name_of(target: str) -> str:
    return _load_target(target).name  # env plug-ins are few and explicit: loading them to learn the name is fine


def register(modality: Modality) -> Modality:
    """Make ``modality`` available in this process (tests, notebooks)."""
    _loaded[modality.name] = modality
    return modality


def names() -> list[str]:
    return sorted(set(_discover()) | set(_loaded))


def get(name: str) -> Modality:
    """The modality called ``name``; ValueError listing the installed ones otherwise."""
    if name in _loaded:
        return _loaded[name]
    target = _discover().get(name)
    if target is None:
        raise ValueError(f"unknown modality {name!r}; installed: {', '.join(names()) or 'none'}")
    mod = _load_target(target)
    if mod.name != name:
        raise ValueError(f"entry point {name!r} -> {target} declares the name {mod.name!r}")
    _loaded[name] = mod
    return mod


def known(name: str) -> bool:
    return name in _loaded or name in _discover()


def reason_table() -> dict[str, str]:
    """Core's rejection reasons plus those of every installed modality (the one table)."""
    table = dict(REASONS)
    for name in names():
        table.update(get(name).reasons)
    return table


def reset() -> None:
    """Forget discovered/loaded modalities (tests that change ``STREAMER_MODALITIES``)."""
    global _sources
    _sources = None
    _loaded.clear()
