"""Job queues: which waiting job may start next.

``no_queue`` runs its jobs in parallel up to ``MAX_PARALLEL_JOBS``; every other queue
(``pkg_queue``, ``iocage_queue``, or any name a subsystem uses) runs one job at a time,
first in, first out.  A queue only orders jobs; starting them is the dispatcher's work.

Pending and running jobs are kept in ordered dicts by job id, so taking the next job and
removing any job (a kill of thousands of pending jobs) cost the same whatever the queue's
length.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterator, List

from sysadmd.dispatcher.job import NO_QUEUE, Job


class JobQueue:
    def __init__(self, name: str, parallel: int):
        self.name = name
        self.parallel = max(1, parallel)
        self.pending: "OrderedDict[str, Job]" = OrderedDict()
        self.running: "OrderedDict[str, Job]" = OrderedDict()

    @classmethod
    def named(cls, name: str, max_parallel_jobs: int) -> "JobQueue":
        return cls(name, max_parallel_jobs if name == NO_QUEUE else 1)

    def __repr__(self) -> str:
        return f"<JobQueue {self.name} running={len(self.running)} pending={len(self.pending)}>"

    def add(self, job: Job) -> None:
        self.pending[job.id] = job

    def next_to_start(self) -> Iterator[Job]:
        """Take waiting jobs off the queue while there is room for them to run."""
        while self.pending and len(self.running) < self.parallel:
            _, job = self.pending.popitem(last=False)
            self.running[job.id] = job
            yield job

    def remove(self, job: Job) -> bool:
        """Forget *job* (pending or running); ``True`` if it was here."""
        for jobs in (self.running, self.pending):
            if jobs.get(job.id) is job:
                del jobs[job.id]
                return True
        return False

    def in_order(self) -> List[Job]:
        """Running jobs first, then waiting ones: the order ``queue_position`` counts."""
        return list(self.running.values()) + list(self.pending.values())
