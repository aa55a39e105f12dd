"""The modality interface: what one kind of acquisition declares so that core and pipeline can serve it.

A modality is ONE :class:`Modality` object (like a LiberTEM UDF declaring its result buffers, or a
napari manifest declaring its contributions). Core and pipeline read only these declarations:

* packet kinds (:class:`PacketKind`): the scalar header fields and the arrays of a packet, with
  dtype and a shape written in header integers (``("n", "height", "width")``). The generic codec
  (:mod:`streamer.core.wire`) decodes and validates any packet from this alone; the modality's
  ``validate`` hook adds checks the declaration cannot express (and may derive arrays);
* results (:class:`ResultSpec`): per-item arrays (first axis = the packet's items) and a
  per-detection table (first axis = detections; column ``item`` says which item it came from),
  plus the names of the flag bits;
* predictors (:class:`PredictorSpec`): physics baselines and trained/compiled models, loaded lazily
  by name in the worker;
* the rest is optional and used by commands: simulator, evaluation, loaders, monitor view, CLI hooks.

Nothing here imports a modality; modalities import this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import argparse

    from .recording import Recording

REQUIRED = object()  #: default of a header field that every packet must carry


@dataclass(frozen=True)
class HeaderField:
    """A scalar in the packet map: ``int``, ``float`` or ``str``; bounds inclusive unless noted."""

    name: str
    type: type
    default: Any = REQUIRED
    min: float | None = None
    max: float | None = None
    positive: bool = False  # strictly > 0 (e.g. pixel sizes, frame periods)
    doc: str = ""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


@dataclass(frozen=True)
class ArraySpec:
    """An array on the wire: raw little-endian C-order bytes of one of ``dtypes``.

    ``shape`` entries are ints or names of integer header fields; the first entry is the item axis
    (``"n"``) for packet and per-item arrays and ``"m"`` (detections) for detection arrays. With
    several dtypes the sender names one in ``<name>_dtype`` or the byte length decides (their item
    sizes must then differ). ``finite``: ``True`` -- NaN/inf anywhere in the array rejects the packet;
    ``"flag"`` -- an item (row) with NaN/inf is flagged instead (its values are zeroed for the predictor,
    its results come back NaN with the modality's ``invalid_flag`` bit) when the modality declares
    one, so one bad row never costs the others; ``False`` -- not checked.
    """

    name: str
    dtypes: tuple[str, ...]
    shape: tuple[int | str, ...]
    required: bool = True
    finite: bool | str = True
    doc: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.dtypes, str):
            object.__setattr__(self, "dtypes", (self.dtypes,))
        sizes = [np.dtype(d).itemsize for d in self.dtypes]
        if len(set(sizes)) != len(sizes):
            # the byte-length rule could not tell them apart without the <name>_dtype key
            object.__setattr__(self, "_ambiguous", True)

    @property
    def dtype(self) -> np.dtype:
        """The first (canonical) dtype."""
        return np.dtype(self.dtypes[0])

    def shape_text(self) -> str:
        return "(" + ", ".join(str(s) for s in self.shape) + ("," if len(self.shape) == 1 else "") + ")"


@dataclass(frozen=True)
class PacketKind:
    """One kind of input packet (``kind`` on the wire)."""

    name: str
    fields: tuple[HeaderField, ...]
    arrays: tuple[ArraySpec, ...]
    item_key: str = "n"  # the header integer counting items (tuples, frames, stacks)
    max_items: int = 1 << 20
    doc: str = ""

    def field(self, name: str) -> HeaderField:
        return next(f for f in self.fields if f.name == name)


#: keys every result message carries besides its arrays (see core.wire.encode_result)
RESULT_ENVELOPE_KEYS = frozenset({"v", "kind", "modality", "stream", "seq", "n", "m", "t_acq", "t_done", "model",
                                  "layout", "invalid", "item"})


@dataclass(frozen=True)
class ResultSpec:
    """What each result message carries besides the envelope.

    ``items``: arrays with first axis ``n`` (one row per input item). ``detections``: arrays with
    first axis ``m``; the codec adds the column ``item`` (<i4, index of the item in the packet). When
    every detection array is optional, a predictor may return none of them (and no ``item``).
    ``flags``: bit value (1, 2, 4, ... 128) -> name, for the uint8 ``flags`` column (per item, or
    per detection when the modality has detections and no per-item flags); readers test ``flags & value``.
    """

    items: tuple[ArraySpec, ...] = ()
    detections: tuple[ArraySpec, ...] = ()
    flags: Mapping[int, str] = field(default_factory=dict)
    #: flag bit set on items whose input was invalid (see ArraySpec.finite="flag"); 0: reject instead
    invalid_flag: int = 0
    #: interval bounds (item or detection arrays): NaN where the model does not cover the instrument
    intervals: tuple[str, ...] = ()
    #: flag bit set where the stream's instrument lies outside what the model covers (see core.profile)
    mismatch_flag: int = 0
    #: what a row of the ``m`` table is, in status lines ("detections", "localizations", ...)
    detection_noun: str = "detections"
    doc: str = ""

    def __post_init__(self) -> None:
        # a bit index (0, 1, 2) instead of a value would make every reader count nothing for bit 0
        bad = [b for b in self.flags if not (isinstance(b, int) and 0 < b < 256 and b & (b - 1) == 0)]
        if bad:
            raise ValueError(f"flags keys must be single-bit values 1, 2, 4, ... 128, not {bad}")
        for name in ("invalid_flag", "mismatch_flag"):
            if getattr(self, name) and getattr(self, name) not in self.flags:
                raise ValueError(f"{name} {getattr(self, name)} is not one of the declared flags")
        arrays = {a.name for a in (*self.items, *self.detections)}
        clash = arrays & RESULT_ENVELOPE_KEYS
        if clash:  # one msgpack map holds both: an array named "v" would overwrite the protocol version
            raise ValueError(f"result array names {sorted(clash)} are envelope keys of a result message")
        if set(self.intervals) - arrays:
            raise ValueError(f"intervals {sorted(set(self.intervals) - arrays)} are not declared result arrays")


class Predictor(Protocol):
    """What a worker runs: decoded packet in, declared result arrays out (vectorized over items)."""

    model_id: str

    def predict(self, packet: "Packet") -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class PredictorSpec:
    """A named predictor; ``factory`` is called once per worker (import heavy things inside it).

    ``from_bundle(path)``: the same predictor on another bundle of its kind (one trained for another
    instrument profile, see :mod:`streamer.core.profile`); workers use it to serve each stream with
    the bundle trained for its instrument. A predictor may have ``coverage`` (a
    :class:`~streamer.core.profile.Coverage`); without one it covers the nominal instrument."""

    name: str
    factory: Callable[[], Predictor]
    doc: str = ""
    from_bundle: Callable[[Any], Predictor] | None = None


@dataclass
class Packet:
    """A decoded, validated input packet.

    ``header`` has every declared field (defaults filled in); ``arrays`` the declared arrays that
    were present (views into the message bytes, read-only) plus anything the modality's
    ``validate`` hook derived; ``n`` the item count.
    """

    stream: str
    seq: int
    t_acq: float
    modality: str
    kind: str
    n: int
    header: dict[str, Any]
    arrays: dict[str, np.ndarray]
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. instrument name; anything undeclared is ignored
    #: items whose input was invalid (bool (n,)), and {reason: items}; None when all are valid
    invalid: np.ndarray | None = None
    invalid_reasons: dict[str, int] = field(default_factory=dict)

    def flag_invalid(self, rows: np.ndarray, reason: str) -> None:
        """Mark items (bool mask (n,)) invalid under ``reason`` (validate hooks call this too)."""
        rows = np.asarray(rows, bool)
        new = rows if self.invalid is None else rows & ~self.invalid
        if new.any():
            self.invalid_reasons[reason] = self.invalid_reasons.get(reason, 0) + int(new.sum())
            self.invalid = rows.copy() if self.invalid is None else self.invalid | rows


class View(Protocol):
    """A monitor view hosted by the monitor shell (Qt only inside ``widget``)."""

    title: str

    def widget(self) -> Any: ...

    def ingest(self, results: list[dict[str, Any]]) -> None: ...

    def refresh(self) -> None: ...


@dataclass
class Modality:
    """Everything one kind of acquisition declares. Only ``name``, ``packets``, ``results`` and
    ``predictors`` are needed by core and pipeline; the rest serves commands and tools."""

    name: str
    title: str
    packets: tuple[PacketKind, ...]
    results: ResultSpec
    predictors: tuple[PredictorSpec, ...]
    default_predictor: str
    #: validation reasons this modality raises besides core's (merged into the one table)
    reasons: Mapping[str, str] = field(default_factory=dict)
    #: semantic checks after the generic decode; may add derived arrays; raises PacketError
    validate: Callable[[Packet], Packet] | None = None
    #: monitor view factory (imports Qt lazily): ``view(options) -> View``
    view: Callable[..., View] | None = None
    #: ``streamer <verb> --modality NAME`` hooks (see :class:`Commands`)
    commands: "Commands | None" = None
    #: the instrument's physical parameters (:class:`streamer.core.profile.ProfileParam`)
    profile: tuple = ()
    doc: str = ""

    def packet_kind(self, kind: str) -> PacketKind | None:
        return next((p for p in self.packets if p.name == kind), None)

    def predictor(self, name: str) -> PredictorSpec:
        for p in self.predictors:
            if p.name == name:
                return p
        raise ValueError(f"modality {self.name!r} has no predictor {name!r}; known: "
                         f"{', '.join(p.name for p in self.predictors)}")


class Commands(Protocol):
    """CLI hooks of a modality (all optional): ``streamer VERB --modality NAME`` calls
    ``add_<verb>_arguments(parser)`` to add the modality's options and ``<verb>(args) -> int`` to run.
    Verbs dispatched this way: simulate, train, evaluate, and any other the modality names in
    ``verbs``. ``simulate``'s hook returns the :class:`~streamer.core.recording.Recording` (the
    generic command saves it); ``demo``/``run`` use ``simulate`` too and ``report`` to compare the
    persisted results with the simulator's ground truth. Import heavy modules inside the methods."""

    verbs: Mapping[str, str]  # extra verb -> one-line help (e.g. MINFLUX's "estimate", "convert")

    def add_simulate_arguments(self, p: "argparse.ArgumentParser") -> None: ...

    def simulate(self, args: "argparse.Namespace") -> "Recording": ...

    def report(self, rec: "Recording", results: dict[str, np.ndarray],
               args: "argparse.Namespace") -> tuple[str, bool]: ...
