"""Live monitor shell of a result stream, for any modality.

Qt-free parts: :mod:`.ring` (bounded columns), :mod:`.state` (shell counters: messages, items,
missed/duplicate seqs, rate, display lag, errors by reason, flags by name, sink statistics) and
:mod:`.subscriber` (ZeroMQ SUB, drain budget, generic result decoding). :mod:`.window` (imports
Qt) is the shell window: a status panel plus a host area for the watched modality's view, which
comes from ``registry.get(name).view(**options)`` (the ``View`` protocol of
:mod:`streamer.core.modality`). Nothing here imports a modality.
"""

from .ring import RingColumns
from .state import Counters, MonitorState

__all__ = ["Counters", "MonitorState", "RingColumns"]
