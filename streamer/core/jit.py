"""Optional numba compilation for hot per-item loops that numpy cannot fuse.

``jit`` compiles with numba when it is installed (it is a project dependency) and otherwise returns
the plain Python function, so a kernel always has a reference implementation next to it."""

from __future__ import annotations

try:  # numba is a dependency, but a missing or broken install must not take the pipeline down
    import numba as _nb

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only where numba is missing
    _nb = None
    HAVE_NUMBA = False


def jit(fn):
    """``numba.njit`` (cached on disk, GIL released, no bounds checks) or ``fn`` unchanged."""
    return _nb.njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")(fn) if HAVE_NUMBA else fn
