"""Which (stream, seq) slots hold a persisted result, and how far each stream is durably settled.

A slot is taken only when a VALID result is released (validation happens before, in the worker):
a corrupt packet never blocks the correct packet with the same seq that follows it. Each packet is
identified by a hash of its content (every key but the send time t_acq):

* same seq, same content as a persisted or in-flight packet: a true duplicate (dropped, counted);
* same seq, different content, both valid: a conflict (reported on the error topic and kept aside
  by the sink, never silently dropped, never replacing what was persisted);
* a rejected packet settles its seq for the watermark but leaves the slot free.

The **watermark** of a stream is the first seq not yet durably settled (persisted AND flushed to
disk, or rejected): publishers may forget every packet below it (:class:`streamer.client.Publisher`
with ``results=`` does), which is what makes a sink restart lose nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_HASHES = 1_000_000  #: persisted digests remembered per stream (older ones below the watermark are forgotten)


@dataclass
class StreamLedger:
    persisted: dict[int, bytes] = field(default_factory=dict)
    inflight: dict[int, list[bytes]] = field(default_factory=dict)
    settled: set[int] = field(default_factory=set)  # durably settled seqs >= watermark
    unflushed: set[int] = field(default_factory=set)
    watermark: int = 0
    forgotten_below: int = 0  # digests of persisted seqs below this were dropped (bounded memory)

    def settle(self, seq: int) -> None:
        if seq >= self.watermark:
            self.settled.add(seq)
            while self.watermark in self.settled:
                self.settled.discard(self.watermark)
                self.watermark += 1


class Ledger:
    def __init__(self) -> None:
        self.streams: dict[str, StreamLedger] = {}
        self.duplicates = 0
        self.conflicts = 0

    def _s(self, stream: str) -> StreamLedger:
        st = self.streams.get(stream)
        if st is None:
            st = self.streams[stream] = StreamLedger()
        return st

    def restore(self, stream: str, persisted: dict[int, bytes]) -> None:
        """State recovered from disk: every persisted packet is durably settled."""
        st = self._s(stream)
        st.persisted.update(persisted)
        for seq in sorted(persisted):
            st.settle(seq)

    def arrive(self, stream: str, seq: int, digest: bytes) -> bool:
        """A packet at ingest: False for a true duplicate (dropped and counted), True to process it."""
        st = self._s(stream)
        if st.persisted.get(seq) == digest or digest in st.inflight.get(seq, ()) or \
                (seq < st.forgotten_below and seq not in st.persisted):
            self.duplicates += 1
            return False
        st.inflight.setdefault(seq, []).append(digest)
        return True

    def _done(self, st: StreamLedger, seq: int, digest: bytes) -> None:
        pending = st.inflight.get(seq)
        if pending is not None:
            if digest in pending:
                pending.remove(digest)
            if not pending:
                del st.inflight[seq]

    def result(self, stream: str, seq: int, digest: bytes) -> str:
        """A valid result released: ``"new"`` (persist it), ``"duplicate"`` or ``"conflict"``."""
        st = self._s(stream)
        self._done(st, seq, digest)
        have = st.persisted.get(seq)
        if have is not None:
            if have == digest:
                self.duplicates += 1
                return "duplicate"
            self.conflicts += 1
            return "conflict"
        st.persisted[seq] = digest
        st.unflushed.add(seq)
        if len(st.persisted) > MAX_HASHES:
            self._forget(st)
        return "new"

    def rejected(self, stream: str | None, seq: int | None, digest: bytes | None) -> None:
        """A rejected packet: its seq is settled (a publisher need not keep it) but stays free."""
        if stream is None or seq is None or stream not in self.streams:
            return
        st = self.streams[stream]
        if digest is not None:
            self._done(st, seq, digest)
        if seq not in st.persisted and seq not in st.inflight:
            st.settle(seq)

    def durable(self, stream: str, seqs: list[int]) -> None:
        """These persisted packets are now on disk."""
        st = self._s(stream)
        for seq in seqs:
            st.unflushed.discard(seq)
            st.settle(seq)

    def watermark(self, stream: str) -> int:
        st = self.streams.get(stream)
        return st.watermark if st else 0

    @staticmethod
    def _forget(st: StreamLedger) -> None:
        old = sorted(s for s in st.persisted if s < st.watermark)[: len(st.persisted) - MAX_HASHES]
        for s in old:
            del st.persisted[s]
        if old:
            st.forgotten_below = max(st.forgotten_below, old[-1] + 1)
