"""Where the ``wasm`` runtime's calls run when they cannot run inline: a
bounded pool of threads (:class:`WorkerPool`).

Such calls wait for one of ``threads`` worker threads, first come, first
served. Their deadline is measured from when they start running, never from
when they were queued, and the time they waited is reported apart
(``Job.waited``). Waiting is bounded twice, and either bound answers
``RESOURCE_EXHAUSTED`` naming the limit, never a timeout for a call that
did not run:

* at most ``max_queue`` calls wait at once: the next one is refused at once;
* a call waits at most ``queue_timeout`` seconds for a thread.

So functions that spin until their timeout can hold every thread, but a
well-behaved call either runs with its whole timeout once a thread frees up,
or is told at once (or after ``queue_timeout``) that the node is full.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from ... import errors

__all__ = ["Job", "WorkerPool"]

_QUEUED, _RUNNING, _DONE, _DROPPED = range(4)


class Job:
    """One call handed to the pool: its future and when it waited and ran."""

    __slots__ = ("future", "state", "queued_at", "started_at")

    def __init__(self, now: float) -> None:
        self.future: asyncio.Future | None = None
        self.state = _QUEUED
        self.queued_at = now
        self.started_at = 0.0

    @property
    def waited(self) -> float:
        """Seconds the call waited for a thread (so far, if it still waits)."""
        end = self.started_at if self.state != _QUEUED and self.started_at else time.monotonic()
        return max(0.0, end - self.queued_at)


def _retrieve(fut: asyncio.Future) -> None:
    """Mark a pool future's exception as seen (its caller may have gone)."""
    if not fut.cancelled():
        fut.exception()


class WorkerPool:
    """``threads`` worker threads, at most ``max_queue`` calls waiting for
    them, each for at most ``queue_timeout`` seconds (see module doc).

    ``config`` names the configuration section in refusal messages.
    """

    def __init__(self, threads: int, max_queue: int, queue_timeout: float, *,
                 name: str = "spear-wasm", config: str = "[runtimes.wasm]") -> None:
        if threads < 1 or max_queue < 0 or queue_timeout <= 0:
            raise errors.InvalidArgument("a worker pool needs threads >= 1, max_queue >= 0 and queue_timeout > 0")
        self.threads = threads
        self.max_queue = max_queue
        self.queue_timeout = float(queue_timeout)
        self.config = config
        #: calls running on a thread right now, and calls waiting for one
        self.running = 0
        self.waiting = 0
        #: calls refused because the queue was full, and calls that gave up waiting
        self.refused = 0
        self.expired = 0
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Job:
        """Queue ``fn(*args)`` for a worker thread (event-loop thread).

        Raises ``ResourceExhausted`` at once when every thread is busy and
        ``max_queue`` calls already wait.
        """
        with self._lock:
            if self.running + self.waiting >= self.threads + self.max_queue:
                self.refused += 1
                raise errors.ResourceExhausted(
                    f"wasm worker pool is full: {self.running} of {self.threads} threads busy and "
                    f"{self.waiting} calls waiting (limit: {self.config} max_queue = {self.max_queue})",
                    details={"limit": "max_queue", "max_queue": self.max_queue, "threads": self.threads,
                             "queued": 0.0},
                )
            self.waiting += 1
        job = Job(time.monotonic())
        try:
            cfut = self._executor.submit(self._run, job, fn, args)
        except RuntimeError:  # shut down
            with self._lock:
                self.waiting -= 1
            raise errors.Unavailable("wasm runtime is closed") from None
        job.future = asyncio.wrap_future(cfut)
        job.future.add_done_callback(_retrieve)
        return job

    def _run(self, job: Job, fn: Callable[..., Any], args: tuple) -> Any:
        """A worker thread's side of a job."""
        with self._lock:
            if job.state == _DROPPED:  # its caller stopped waiting
                raise errors.Cancelled("the call was given up before it started")
            job.state = _RUNNING
            job.started_at = time.monotonic()
            self.waiting -= 1
            self.running += 1
        try:
            return fn(*args)
        finally:
            with self._lock:
                self.running -= 1
                job.state = _DONE

    def drop(self, job: Job) -> bool:
        """Give up a job that has not started: its thread will skip it.
        Returns True if it was still waiting."""
        with self._lock:
            if job.state != _QUEUED:
                return False
            job.state = _DROPPED
            self.waiting -= 1
            return True

    async def result(self, job: Job, timeout: float, grace: float) -> Any:
        """The job's result, once it ran.

        Waits at most ``queue_timeout`` for the job to start (then
        ``ResourceExhausted``), and at most ``timeout + grace`` after it
        started: a guest that is past its deadline and still not back is
        blocked where the epoch cannot reach it (a host call), and the caller
        gets ``DeadlineExceeded`` while the thread stays busy until the guest
        wakes. A ``SpearError`` the job raised carries ``details["queued"]``.
        """
        fut = job.future
        try:
            while True:
                now = time.monotonic()
                if job.state == _QUEUED:
                    until = job.queued_at + self.queue_timeout
                    if now >= until and self.drop(job):
                        self.expired += 1
                        raise errors.ResourceExhausted(
                            f"no wasm worker thread free for {self.queue_timeout:g}s: "
                            f"{self.running} of {self.threads} threads busy "
                            f"(limit: {self.config} queue_timeout = {self.queue_timeout:g})",
                            details={"limit": "queue_timeout", "queue_timeout": self.queue_timeout,
                                     "threads": self.threads},
                        )
                else:
                    until = job.started_at + timeout + grace
                    if now >= until and not fut.done():
                        ran = now - job.started_at
                        raise errors.DeadlineExceeded(
                            f"exceeded its timeout of {timeout:g}s (ran {ran:.3f}s; the guest "
                            f"is blocked in a host call, where the deadline cannot stop it)",
                            details={"limit": "timeout", "timeout": timeout, "run": ran},
                        )
                try:
                    return await asyncio.wait_for(asyncio.shield(fut), max(0.0, until - now))
                except asyncio.TimeoutError:
                    continue
        except asyncio.CancelledError:
            self.drop(job)
            task = asyncio.current_task()
            if fut.cancelled() and task is not None and not task.cancelling():
                # not our caller: shutdown() dropped the job while it waited
                raise errors.Unavailable("wasm runtime is closed") from None
            raise
        except errors.SpearError as exc:
            exc.details.setdefault("queued", job.waited)
            raise

    def shutdown(self) -> None:
        """Refuse new jobs and drop the waiting ones (running ones go on)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
