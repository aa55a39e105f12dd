"""Live monitor of a result stream: Qt-free model (:mod:`.model`, :mod:`.ring`), ZeroMQ
subscriber (:mod:`.subscriber`) and the pyqtgraph window (:mod:`.window`, imports Qt)."""

from .model import MonitorModel
from .ring import RingColumns

__all__ = ["MonitorModel", "RingColumns"]
