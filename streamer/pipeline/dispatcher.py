"""Credit-based job bookkeeping: which worker holds which packet, and re-sending what a dead one held.

Pure logic, no sockets (the sink drives it), so every rule here is unit-testable:
* a worker announces free slots (its prefetch) when first seen; each dispatch uses one credit and
  each answer returns one, so no worker ever holds more than ``prefetch`` jobs (back-pressure);
* a worker that says goodbye, disappears (send fails) or stays silent past the heartbeat timeout (the
  job timeout while it holds jobs: a long packet keeps it from heartbeating) is dropped and its jobs
  go back to the FRONT of the queue, oldest first, so order is preserved;
* a job unanswered for ``job_timeout`` is re-queued too; the first answer wins, later ones are
  ignored (``redundant``) -- that is what makes re-sending safe;
* a job that was dispatched ``max_deliveries`` times without an answer is poison (it kills
  workers): it is given up and reported instead of being re-sent forever;
* each worker announces the modalities it serves; a job goes only to a worker serving its
  modality. Jobs of a modality nobody serves wait in its queue (bounded by the sink's window) and
  are reported by :meth:`unserved`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from . import defaults


@dataclass
class Job:
    id: int
    raw: bytes
    stream: str
    seq: int
    modality: str = "minflux"
    deliveries: int = 0
    digest: bytes = b""  # content hash (the ledger tells duplicates from conflicts by it)
    worker: bytes | None = None
    sent_at: float = 0.0


@dataclass
class WorkerState:
    identity: bytes
    credits: int
    last_seen: float
    jobs: set[int] = field(default_factory=set)
    stale: set[int] = field(default_factory=set)  # re-sent elsewhere after a timeout, still occupying a slot
    serves: frozenset[str] | None = None  # modalities it serves (None: announced none, serves any)

    def can_serve(self, modality: str) -> bool:
        return self.serves is None or modality in self.serves


class Dispatcher:
    def __init__(self, heartbeat_timeout: float = defaults.HEARTBEAT_TIMEOUT_S,
                 job_timeout: float = defaults.JOB_TIMEOUT_S, max_deliveries: int = defaults.MAX_DELIVERIES):
        self.heartbeat_timeout = heartbeat_timeout
        self.job_timeout = job_timeout
        self.max_deliveries = max_deliveries
        self.queues: dict[str, deque[Job]] = {}  # per modality, oldest first
        self.in_flight: dict[int, Job] = {}
        self.workers: dict[bytes, WorkerState] = {}
        self.resent = 0
        self.redundant = 0
        self.workers_lost = 0
        self._announced: dict[bytes, tuple[int, frozenset[str] | None]] = {}  # (prefetch, serves) per worker

    # ------------------------------------------------------------------ workers
    def seen(self, identity: bytes, now: float, free_slots: int | None = None,
             serves: frozenset[str] | None = None) -> bool:
        """Any message from a worker; registers it (True) when unknown, with ``free_slots`` credits
        and the modalities it ``serves`` (from its heartbeat)."""
        if free_slots is not None:
            self._announced[identity] = (max(0, free_slots), serves)
        w = self.workers.get(identity)
        if w is None:
            # a worker declared dead that speaks again gets its slots back; answers to jobs it held
            # before are then redundant and return no credit, so it holds at most 2 x prefetch once
            slots, what = self._announced.get(identity, (0, None))
            self.workers[identity] = WorkerState(identity, slots, now, serves=what)
            return True
        w.last_seen = now
        if free_slots is not None:
            w.serves = serves
            # credits follow from what the worker may hold minus what it holds: a worker whose first
            # message to this sink was an answer (the sink restarted) was registered without credits
            w.credits = max(0, self._announced[identity][0] - len(w.jobs) - len(w.stale))
        return False

    @property
    def pending(self) -> list[Job]:
        """All queued jobs, oldest first (for reports; dispatch uses the per-modality queues)."""
        return sorted((j for q in self.queues.values() for j in q), key=lambda j: j.id)

    def served(self) -> set[str] | None:
        """Modalities some live worker serves (None: a worker serves any)."""
        out: set[str] = set()
        for w in self.workers.values():
            if w.serves is None:
                return None
            out |= w.serves
        return out

    def queued(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def unserved(self) -> dict[str, int]:
        """{modality: queued jobs} for modalities no live worker serves."""
        return {m: len(q) for m, q in self.queues.items()
                if q and not any(w.can_serve(m) for w in self.workers.values())}

    def lost(self, identity: bytes) -> list[Job]:
        """Drop a worker; re-queue its jobs at the front. Returns jobs given up as poison."""
        w = self.workers.pop(identity, None)
        if w is None:
            return []
        self.workers_lost += 1
        return self._requeue(sorted(w.jobs))

    def _requeue(self, job_ids: list[int]) -> list[Job]:
        poison = []
        for jid in reversed(job_ids):  # appendleft in reverse keeps the oldest first
            job = self.in_flight.pop(jid)
            job.worker = None
            if job.deliveries >= self.max_deliveries:
                poison.append(job)
            else:
                self.resent += 1
                self.queues.setdefault(job.modality, deque()).appendleft(job)
        return poison[::-1]

    def expire(self, now: float) -> tuple[list[bytes], list[Job]]:
        """Drop silent workers and re-queue timed-out jobs: (lost worker ids, poison jobs)."""
        # a worker computing a long packet sends no heartbeat until it answers: while it holds jobs it
        # has the job timeout to be heard from (a killed one is caught at once by its disconnect)
        dead = [i for i, w in self.workers.items()
                if now - w.last_seen > (max(self.heartbeat_timeout, self.job_timeout) if w.jobs else self.heartbeat_timeout)]
        poison = [job for i in dead for job in self.lost(i)]
        late = [jid for jid, job in self.in_flight.items() if now - job.sent_at > self.job_timeout]
        if late:
            for jid in late:
                job = self.in_flight[jid]
                w = self.workers.get(job.worker)
                if w is not None:  # the slot stays occupied until the worker answers
                    w.jobs.discard(jid)
                    w.stale.add(jid)
            poison += self._requeue(sorted(late))
        return dead, poison

    # ------------------------------------------------------------------ jobs
    def add(self, job: Job) -> None:
        self.queues.setdefault(job.modality, deque()).append(job)

    def credits(self) -> int:
        return sum(w.credits for w in self.workers.values())

    def assign(self, now: float) -> tuple[bytes, Job] | None:
        """Next (worker, job) to send: the oldest job that some worker with credits serves, to the
        one of those with most credits."""
        heads = sorted((q[0].id, m) for m, q in self.queues.items() if q)
        for _, modality in heads:
            best = max((w for w in self.workers.values() if w.credits > 0 and w.can_serve(modality)),
                       key=lambda w: w.credits, default=None)
            if best is not None:
                break
        else:
            return None
        job = self.queues[modality].popleft()
        best.credits -= 1
        best.jobs.add(job.id)
        job.worker, job.sent_at = best.identity, now
        job.deliveries += 1
        self.in_flight[job.id] = job
        return best.identity, job

    def unassign(self, identity: bytes, job: Job) -> list[Job]:
        """The send to ``identity`` failed (peer gone): undo, drop the worker; returns poison jobs."""
        job.deliveries -= 1
        return self.lost(identity)

    def complete(self, job_id: int, identity: bytes) -> Job | None:
        """An answer for ``job_id``; None when it was already answered (a re-sent duplicate)."""
        w = self.workers.get(identity)
        if w is not None and (job_id in w.jobs or job_id in w.stale):
            w.jobs.discard(job_id)
            w.stale.discard(job_id)
            w.credits += 1
        job = self.in_flight.pop(job_id, None)
        if job is None:
            self.redundant += 1
            return None
        # if it was re-sent to another worker, that worker's answer will be redundant and free its slot
        return job
