"""Runner: the asyncio driver of a :class:`SpearletCore`.

It owns what the core must not touch: the runtimes and a warm
:class:`InstancePool` per deployed function, the asyncio tasks that run
executions, and the way out (``reply`` to a direct client, ``to_sms`` on the
link, both set by the daemon). It turns ROUTER messages and runtime outcomes
(finished, failed, cancelled, a log chunk) into core events and carries out
the instructions the core returns.

Invocation modes, as the client sees them:

* ``sync``: the reply is the ``Result`` (output as the payload frame); on a
  warm instance of a runtime that can answer inline, before the handler
  returns (no task, no record);
* ``async``: the reply is ``Accepted``; ``GetExecution``/``CancelExecution``
  follow the execution by id;
* ``stream``: ``LogChunk`` messages as the function writes to stderr, then
  the ``Result``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

import msgspec

from .. import errors, logs, memory, protocol as P
from ..autoscale.warming import make as make_warming
from ..runtimes import Prepared, Runtime, RuntimeManager
from ..runtimes.base import STDERR_TAIL, TRACEBACK_TAIL
from .core import SpearletCore
from .events import (Asked, Cancel, CancelAsked, Deployed, Ensure, Ensured, Finished, Invoked,
                     Logged, Remove, RemoveAsked, Reply, Reregister, SendHeartbeat, Start, ToSMS,
                     Wait)
from .pool import InstancePool

log = logging.getLogger("spear.functions")

_STATUS_OF = {
    errors.DeadlineExceeded: "timed_out",
    errors.Cancelled: "cancelled",
}
_CANCELLED = P.ErrorInfo(code="CANCELLED", message="cancelled by request")


def _failure(eid: str, exc: errors.SpearError) -> Finished:
    """The end of an execution that raised ``exc`` (status, typed error, exit code,
    the stderr tail and traceback the runtime kept, bounded again for the wire)."""
    x, err, tb = (exc.details.get(k) for k in ("exit_code", "stderr", "traceback"))
    return Finished(eid, _STATUS_OF.get(type(exc), "failed"),
                    error=P.ErrorInfo(code=exc.code, message=exc.message,
                                      stderr_tail=err[-STDERR_TAIL:] if isinstance(err, str) else "",
                                      traceback=tb[-TRACEBACK_TAIL:] if isinstance(tb, str) else ""),
                    exit_code=x if isinstance(x, int) else None)


def _internal(eid: str, exc: Exception) -> Finished:
    return Finished(eid, "failed",
                    error=P.ErrorInfo(code="INTERNAL", message=f"{type(exc).__name__}: {exc}"))


@dataclass
class Deployment:
    """A function installed on this node: its runtime, compiled form and pool."""

    spec: P.FunctionSpec
    runtime: Runtime
    prepared: Prepared
    pool: InstancePool


def _drop(*args) -> bool:
    """Where messages go until the daemon connects ``reply``/``to_sms`` (in-process use)."""
    return False


class Runner:
    """Deployments, pools and execution tasks of one Spearlet, driving its core.

    ``core``: the node's :class:`SpearletCore`, or a node id to make one
    with no maxima (in-process callers and tests). ``reply``, ``to_sms`` and
    ``fetch`` (an async ``name -> (spec, sms_digest)``) are set by the
    daemon; ``on_link`` receives the link instructions (heartbeats,
    registering again).
    """

    def __init__(self, runtimes: RuntimeManager, core: SpearletCore | str, *,
                 warming: str = "fixed") -> None:
        self.runtimes = runtimes
        self.warming = warming  # [spearlet] warming: "fixed" or "learned"
        self.core = core if isinstance(core, SpearletCore) else SpearletCore(core)
        self.node_id = self.core.node_id
        self.deployments: dict[str, Deployment] = {}
        self.tasks: dict[str, asyncio.Task] = {}  # execution id -> the task running it
        self.reply: Callable = _drop
        self.to_sms: Callable = _drop
        self.fetch: Callable[[str], Awaitable[tuple[P.FunctionSpec, str]]] | None = None
        self.on_link: Callable = _drop
        self._ended: dict[str, asyncio.Event] = {}  # executions a GetExecution waits for
        self._deploying: dict[str, asyncio.Lock] = {}
        self._background: set[asyncio.Task] = set()
        self._do = {Reply: self._reply, ToSMS: self._send, Start: self._start,
                    Cancel: self._cancel, Ensure: self._ensure, Remove: self._remove,
                    Wait: self._wait, SendHeartbeat: self._link, Reregister: self._link}

    # ------------------------------------------------------------ figures

    @property
    def running(self) -> int:
        """Executions admitted and not yet ended."""
        return self.core.running

    @property
    def max_concurrency(self) -> int:
        return self.core.max_concurrency

    @property
    def draining(self) -> bool:
        return self.core.draining

    @property
    def warm(self) -> int:
        """Idle instances over all pools."""
        return sum(d.pool.warm for d in self.deployments.values())

    def info(self, d: Deployment) -> P.FunctionInfo:
        """The wire description of a deployment, with its pool's figures."""
        s = d.pool.slots
        return P.FunctionInfo(name=d.spec.name, runtime=d.spec.runtime, digest=d.prepared.digest,
                              warm=s.idle, busy=s.busy, hits=s.hits, misses=s.misses,
                              evictions=s.evictions)

    def get(self, name: str) -> Deployment:
        """The deployment of ``name``, or NOT_FOUND."""
        d = self.deployments.get(name)
        if d is None:
            raise errors.NotFound(f"function {name!r} is not deployed on node {self.node_id}")
        return d

    # ------------------------------------------------------------ the core

    def feed(self, event) -> None:
        """Hand one event to the core and carry out what it answers."""
        for ins in self.core.handle(event, time.time()):
            self._do[type(ins)](ins)

    def _reply(self, ins: Reply) -> None:
        self.reply(ins.ident, ins.msg, ins.payload)

    def _send(self, ins: ToSMS) -> None:
        self.to_sms(ins.msg, ins.payload)

    def _link(self, ins) -> None:
        self.on_link(ins)

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _ended_now(self, ev: Finished) -> None:
        """Feed an execution's end; wake whoever waits for it."""
        self.feed(ev)
        waiters = self._ended.pop(ev.execution_id, None)
        if waiters is not None:
            waiters.set()

    def _track(self, eid: str, coro, d: Deployment | None = None, slot: int = -1) -> None:
        """Run ``coro`` as the task of execution ``eid`` (what Cancel cancels);
        ``slot`` of ``d``'s pool is already taken for it."""
        # the loop's own create_task: ensure_future's type checks cost a frame per execution
        task = self.tasks[eid] = asyncio.get_running_loop().create_task(coro)
        task.add_done_callback(lambda t: self._reap(eid, t, d, slot))

    def _reap(self, eid: str, task: asyncio.Task, d: Deployment | None, slot: int) -> None:
        if self.tasks.get(eid) is task:
            del self.tasks[eid]
        if task.cancelled():  # cancelled before its first step: nothing of it ran
            if slot >= 0 and d is not None:
                d.pool.release(slot)
            self._ended_now(Finished(eid, "cancelled", error=_CANCELLED))

    # ------------------------------------------------------------ deployments

    async def deploy(self, spec: P.FunctionSpec, sms_digest: str = "") -> P.FunctionInfo:
        """Install (or replace) a function and pre-warm ``min_warm`` instances."""
        self.core.check_spec(spec)
        runtime = await self.runtimes.ready(spec.runtime)  # checks a stale docker again
        lock = self._deploying.setdefault(spec.name, asyncio.Lock())
        async with lock:
            prepared = await runtime.prepare(spec)
            if not prepared.digest:
                prepared.digest = hashlib.sha256(msgspec.msgpack.encode(spec)).hexdigest()
            learned = None if self.warming == "fixed" else make_warming(self.warming,
                                                                          spec.pool.idle_ttl)
            pool = InstancePool(runtime, prepared, spec.pool, learned)
            try:
                await pool.prewarm()
            except BaseException:
                await pool.close()
                await runtime.release(prepared)
                raise
            old = self.deployments.get(spec.name)
            d = Deployment(spec, runtime, prepared, pool)
            self.deployments[spec.name] = d
            self.feed(Deployed(spec, prepared.digest, sms_digest))
            if old is not None:
                await self._retire(old)
        log.info("deployed %s (%s, digest %s, %d warm)", spec.name, spec.runtime,
                 prepared.digest[:12], pool.warm)
        return self.info(d)

    async def ensure(self, name: str, digest: str) -> None:
        """Make sure version ``digest`` (the SMS's) of ``name`` is deployed, fetching it if not."""
        f = self.core.functions.get(name)
        if f is not None and f.sms_digest == digest:
            return
        async with self._deploying.setdefault("fetch:" + name, asyncio.Lock()):
            f = self.core.functions.get(name)
            if f is not None and f.sms_digest == digest:
                return
            spec, got = await self.fetch(name)
            await self.deploy(spec, sms_digest=got)

    def _remove(self, ins: Remove) -> None:
        d = self.deployments.pop(ins.name, None)

        async def close() -> None:
            if d is not None:
                await self._retire(d)
            log.info("removed %s", ins.name)
            if ins.ident is not None:
                self.reply(ins.ident, P.Ok(id=ins.msg_id))

        self._spawn(close())

    @staticmethod
    async def _retire(d: Deployment) -> None:
        """Close a replaced or removed deployment's pool, then let its runtime free
        what it kept for it (its code, its environment)."""
        await d.pool.close()
        try:
            await d.runtime.release(d.prepared)
        except Exception:  # noqa: BLE001 - the deployment is gone either way
            log.exception("releasing %s failed", d.spec.name)

    # ------------------------------------------------------------ executions

    def _start(self, ins: Start) -> None:
        d = self.deployments.get(ins.function)
        slot = -1
        if ins.inline and d is not None:
            slot = d.pool.try_acquire()
            if slot >= 0:
                done = self._run_inline(d, slot, ins)
                if done is not None:
                    self.feed(done)
                    return
        self._track(ins.execution_id, self._run(ins, d, slot), d, slot)

    def _run_inline(self, d: Deployment, slot: int, ins: Start) -> Finished | None:
        """Run on the warm instance in ``slot`` if its runtime answers inline;
        None when it cannot (the slot stays taken for :meth:`_run`)."""
        t0 = time.perf_counter()
        inst = d.pool.instances[slot]
        try:
            outcome = d.runtime.invoke_now(inst, ins.data, ins.args, ins.limits,
                                           traceparent=ins.traceparent, tracestate=ins.tracestate)
        except errors.SpearError as exc:
            d.pool.release(slot, healthy=isinstance(exc, errors.FunctionError) and inst.reusable)
            done = _failure(ins.execution_id, exc)
        except Exception as exc:  # noqa: BLE001 - a runtime bug fails the execution only
            d.pool.release(slot, healthy=False)
            log.exception("inline execution of %s failed inside Spear", ins.function,
                          extra={"execution_id": ins.execution_id, "trace_id": ins.trace_id})
            done = _internal(ins.execution_id, exc)
        else:
            if outcome is None:
                return None
            d.pool.release(slot)
            done = Finished(ins.execution_id, "succeeded", outcome.output,
                            exit_code=outcome.exit_code, usage=outcome.usage)
        done.run = done.total = time.perf_counter() - t0
        done.inline = True
        return done

    async def _run(self, ins: Start, d: Deployment | None, slot: int = -1) -> None:
        """Run one execution to its end and feed that end; never raises."""
        eid = ins.execution_id
        logs.bind(eid, ins.trace_id)  # this task's own context: the runtime's lines say whose
        t_submit = t_run = time.perf_counter()
        cold = waited = 0.0  # waited: the runtime kept the call queued (for a thread)
        on_log = (lambda chunk: self.feed(Logged(eid, chunk))) if ins.stream else None
        try:
            if d is None:
                d = self.get(ins.function)
            slot, inst, cold = await d.pool.acquire(slot=slot)
            t_run = time.perf_counter()
            healthy = False
            try:
                outcome = await d.runtime.invoke(inst, bytes(ins.data), ins.args, ins.limits,
                                                 on_log, traceparent=ins.traceparent,
                                                 tracestate=ins.tracestate)
                healthy = True
            except errors.FunctionError:
                # the user's code failed but the instance may be fine (the runtime
                # clears ``reusable`` when it is not)
                healthy = inst.reusable
                raise
            finally:
                d.pool.release(slot, healthy=healthy)
                slot = -1
            done = Finished(eid, "succeeded", outcome.output, exit_code=outcome.exit_code,
                            usage=outcome.usage)
            waited = outcome.queued
        except asyncio.CancelledError:
            done = Finished(eid, "cancelled", error=_CANCELLED)
        except errors.SpearError as exc:
            done = _failure(eid, exc)
            q = exc.details.get("queued")
            waited = q if isinstance(q, float) else 0.0
        except Exception as exc:  # noqa: BLE001 - a runtime bug fails the execution, not the node
            log.exception("execution %s of %s failed inside Spear", eid, ins.function)
            done = _internal(eid, exc)
        finally:
            if slot >= 0 and d is not None:  # taken inline, never reached the runtime
                d.pool.release(slot)
        t_end = time.perf_counter()
        done.queue = max(0.0, t_run - t_submit - cold) + waited
        done.cold = cold
        done.run = max(0.0, t_end - t_run - waited)
        done.total = t_end - t_submit
        self._ended_now(done)

    def _ensure(self, ins: Ensure) -> None:
        self._track(ins.execution_id, self._ensure_then_start(ins))

    async def _ensure_then_start(self, ins: Ensure) -> None:
        eid = ins.execution_id
        error = None
        try:
            await self.ensure(ins.function, ins.digest)
        except asyncio.CancelledError:
            self._ended_now(Finished(eid, "cancelled", error=_CANCELLED))
            return
        except Exception as exc:  # noqa: BLE001 - any failure: the SMS is told
            if not isinstance(exc, errors.SpearError):
                log.exception("preparing %s for execution %s failed", ins.function, eid)
                exc = errors.Internal(f"{type(exc).__name__}: {exc}")
            error = exc
        self.feed(Ensured(eid, error))  # its Start makes the task that runs it

    def _cancel(self, ins: Cancel) -> None:
        task = self.tasks.get(ins.execution_id)
        if task is not None:
            task.cancel()

    def _wait(self, ins: Wait) -> None:
        ended = self._ended.setdefault(ins.msg.execution_id, asyncio.Event())

        async def wait() -> None:
            try:
                await asyncio.wait_for(ended.wait(), ins.msg.wait)
            except asyncio.TimeoutError:
                pass
            self.feed(Asked(ins.ident, msgspec.structs.replace(ins.msg, wait=0.0)))

        self._spawn(wait())

    async def execute(self, function: str, data: bytes = b"", args: list | None = None,
                      timeout: float | None = None) -> P.ExecutionInfo:
        """Run one execution as a client's async Invoke would and wait for its
        end (for in-process callers); a refusal is raised."""
        msg = P.Invoke(id=0, function=function, args=args or [], mode="async", timeout=timeout)
        eid = ""
        for ins in self.core.handle(Invoked(b"", msg, data), time.time()):
            if isinstance(ins, Reply):
                P.raise_for(ins.msg)
                eid = ins.msg.execution_id
            else:
                self._do[type(ins)](ins)
        task = self.tasks.get(eid)
        if task is not None:
            await asyncio.shield(task)
        return self.core.info(eid)

    # ------------------------------------------------------------ wire handlers

    def handlers(self) -> dict:
        """Message handlers for the Spearlet's ROUTER (answers go out through ``reply``)."""
        return {
            P.DeployFunction: self.on_deploy,
            P.RemoveFunction: lambda ident, msg, payload: self.feed(
                RemoveAsked(msg.name, ident, msg.id)),
            P.ListFunctions: self.on_list,
            P.Invoke: lambda ident, msg, payload: self.feed(Invoked(ident, msg, payload)),
            P.GetExecution: lambda ident, msg, payload: self.feed(Asked(ident, msg)),
            P.CancelExecution: lambda ident, msg, payload: self.feed(CancelAsked(msg, ident)),
        }

    async def on_deploy(self, ident, msg: P.DeployFunction, payload):
        """DeployFunction: the artifact may travel as the payload frame."""
        spec = msg.spec
        if payload is not None:
            spec = msgspec.structs.replace(spec, artifact=bytes(payload))
        return P.Deployed(id=msg.id, function=await self.deploy(spec))

    def on_list(self, ident, msg: P.ListFunctions, payload):
        """ListFunctions: every deployment with its pool's figures."""
        return P.FunctionList(id=msg.id, functions=[self.info(d) for d in self.deployments.values()])

    # ------------------------------------------------------------ upkeep

    async def evict_loop(self, period: float = 5.0) -> None:
        """Destroy instances idle for longer than their pool's ``idle_ttl`` (or as
        its warming policy says, then pre-warm what it wants), and let each
        runtime collect what no deployment uses, forever."""
        while True:
            await asyncio.sleep(period)
            memory.trim()  # what a burst of big payloads freed goes back to the system
            for rt in list(self.runtimes.runtimes.values()):
                try:
                    rt.collect()
                except Exception:  # noqa: BLE001
                    log.exception("collecting the unused cache of runtime %s failed", rt.name)
            for d in list(self.deployments.values()):
                try:
                    n = await d.pool.evict_idle()
                    if n:
                        log.info("evicted %d idle instance(s) of %s", n, d.spec.name)
                except Exception:  # noqa: BLE001
                    log.exception("eviction failed for %s", d.spec.name)
            await self.warm_up()

    async def warm_up(self) -> None:
        """Pre-warm what the learned warming policies want, while the node's
        memory has room (``[spearlet] max_memory_mb`` against each function's
        ``limits.memory_mb``): a pre-warmed instance must not crowd out calls."""
        cap = self.core.maxima.memory_mb
        held = sum((d.pool.warm + d.pool.busy) * (d.spec.limits.memory_mb or 0)
                   for d in self.deployments.values())
        for d in list(self.deployments.values()):
            need = d.spec.limits.memory_mb or 0
            if d.pool.warming is None or (cap is not None and held + need > cap):
                continue
            try:
                if await d.pool.warm_up():
                    held += need
                    log.info("pre-warmed an instance of %s", d.spec.name)
            except Exception:  # noqa: BLE001
                log.exception("pre-warming failed for %s", d.spec.name)

    async def close(self, timeout: float = 1.0) -> None:
        """Cancel running executions (their ends are still reported, within
        ``timeout``), answer the waits, destroy every instance."""
        running = list(self.tasks.values())
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running, timeout=timeout)
        if self._background:
            await asyncio.wait(list(self._background), timeout=timeout)
        for d in list(self.deployments.values()):
            await d.pool.close()
        self.deployments.clear()
