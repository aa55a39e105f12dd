"""Per-stream sequence tracking for the stats: gaps (seq jumped), late fills of gaps (duplicates: see ledger)."""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_MISSING = 100_000  # remembered missing seqs per stream (bounded memory)


@dataclass
class StreamState:
    next_seq: int = 0
    missing: set[int] = field(default_factory=set)
    ended_at: int | None = None


class SeqTracker:
    """Classifies each arriving (stream, seq): 'new', 'late' (fills a gap) or 'duplicate'.

    Counts are exact while fewer than MAX_MISSING seqs of a stream are outstanding; beyond that the
    oldest missing seqs are forgotten, and a packet arriving for one of them counts as duplicate.
    """

    def __init__(self) -> None:
        self.streams: dict[str, StreamState] = {}
        self.gaps = 0
        self.duplicates = 0
        self.late = 0

    def classify(self, stream: str, seq: int) -> str:
        st = self.streams.setdefault(stream, StreamState())
        if seq == st.next_seq:
            st.next_seq += 1
            return "new"
        if seq > st.next_seq:
            self.gaps += seq - st.next_seq
            self._remember(st, range(max(st.next_seq, seq - MAX_MISSING), seq))
            st.next_seq = seq + 1
            return "new"
        if seq in st.missing:
            st.missing.discard(seq)
            self.gaps -= 1
            self.late += 1
            return "late"
        self.duplicates += 1
        return "duplicate"

    def restore(self, stream: str, persisted) -> None:
        """A restarted sink: seqs already persisted by an earlier run are not gaps, the others below are."""
        seqs = sorted(persisted)
        if not seqs:
            return
        st = self.streams.setdefault(stream, StreamState())
        st.next_seq = max(st.next_seq, seqs[-1] + 1)
        missing = set(range(max(0, st.next_seq - MAX_MISSING), st.next_seq)) - set(seqs)
        self.gaps += len(missing - st.missing)
        st.missing |= missing

    def end(self, stream: str, total: int) -> None:
        """End-of-stream after ``total`` packets: seqs never received at the tail are gaps too."""
        st = self.streams.setdefault(stream, StreamState())
        if total > st.next_seq:
            self.gaps += total - st.next_seq
            self._remember(st, range(max(st.next_seq, total - MAX_MISSING), total))
            st.next_seq = total
        st.ended_at = total

    @staticmethod
    def _remember(st: StreamState, seqs: range) -> None:
        st.missing.update(seqs)
        if len(st.missing) > MAX_MISSING:
            for s in sorted(st.missing)[: len(st.missing) - MAX_MISSING]:
                st.missing.discard(s)

    def summary(self) -> dict:
        return {k: {"next_seq": v.next_seq, "ended": v.ended_at is not None} for k, v in self.streams.items()}
