"""FunctionService and execution manager of a Spearlet.

Deploys functions into their runtime, keeps a warm :class:`InstancePool` per
function, and runs invocations in three modes:

* ``sync``: the reply is the ``Result`` (output as the payload frame);
* ``async``: the reply is ``Accepted``; ``GetExecution``/``CancelExecution``
  follow the execution by id;
* ``stream``: ``LogChunk`` messages as the function writes to stderr, then
  the ``Result``.

A per-node concurrency limit answers RESOURCE_EXHAUSTED instead of queueing
without bound. Finished executions are kept (bounded) for later lookups.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import msgspec

from .. import errors, protocol as P
from ..ids import new_id
from ..runtimes import RuntimeManager
from ..runtimes.base import Prepared, Runtime
from .pool import InstancePool

log = logging.getLogger("spear.functions")

_NO_USAGE = P.ExecUsage()

_STATUS_OF = {
    errors.DeadlineExceeded: "timed_out",
    errors.Cancelled: "cancelled",
}


def _failure(exc: errors.SpearError) -> tuple[str, P.ErrorInfo, int | None]:
    """Status, typed error and exit code of an execution that raised ``exc``."""
    x = exc.details.get("exit_code")
    return (_STATUS_OF.get(type(exc), "failed"), P.ErrorInfo(code=exc.code, message=exc.message),
            x if isinstance(x, int) else None)


@dataclass
class Deployment:
    """A function installed on this node."""

    spec: P.FunctionSpec
    runtime: Runtime
    prepared: Prepared
    pool: InstancePool
    invocations: int = 0
    sms_digest: str = ""


@dataclass
class Execution:
    """One execution tracked by this node."""

    info: P.ExecutionInfo
    output: bytes = b""
    task: asyncio.Task | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


class FunctionService:
    """Deployments, pools and executions of one Spearlet."""

    def __init__(self, runtimes: RuntimeManager, node_id: str, *, max_concurrency: int = 64,
                 keep_executions: int = 10_000) -> None:
        self.runtimes = runtimes
        self.node_id = node_id
        self.max_concurrency = max_concurrency
        self.deployments: dict[str, Deployment] = {}
        self.executions: collections.OrderedDict[str, Execution] = collections.OrderedDict()
        self.keep_executions = keep_executions
        self.running = 0
        self.counts: collections.Counter = collections.Counter()
        self._deploying: dict[str, asyncio.Lock] = {}
        self.draining = False
        self.maxima = None  # SpearletConfig with max_* fields, set by the daemon
        #: the node's output cap in MiB ([runtimes.process] max_output_mb), set by the daemon
        self.max_output_mb: int | None = None
        self.dispatched: set[str] = set()  # SMS executions running here
        self.metrics = None  # SpearletMetrics, set by the daemon

    # ------------------------------------------------------------ deployments

    def info(self, d: Deployment) -> P.FunctionInfo:
        s = d.pool.slots
        return P.FunctionInfo(name=d.spec.name, runtime=d.spec.runtime, digest=d.prepared.digest,
                              warm=s.idle, busy=s.busy, hits=s.hits, misses=s.misses,
                              evictions=s.evictions)

    async def deploy(self, spec: P.FunctionSpec, sms_digest: str = "") -> P.FunctionInfo:
        """Install (or replace) a function and pre-warm ``min_warm`` instances."""
        self.check_limits(spec.limits)
        P.check_secret_env(spec)
        if spec.pool.min_warm > spec.pool.max:
            raise errors.InvalidArgument(
                f"pool.min_warm ({spec.pool.min_warm}) exceeds pool.max ({spec.pool.max})")
        runtime = await self.runtimes.ready(spec.runtime)  # checks a stale docker again
        lock = self._deploying.setdefault(spec.name, asyncio.Lock())
        async with lock:
            prepared = await runtime.prepare(spec)
            if not prepared.digest:
                prepared.digest = hashlib.sha256(msgspec.msgpack.encode(spec)).hexdigest()
            pool = InstancePool(runtime, prepared, spec.pool)
            try:
                await pool.prewarm()
            except BaseException:
                await pool.close()
                raise
            old = self.deployments.get(spec.name)
            d = Deployment(spec, runtime, prepared, pool, sms_digest=sms_digest)
            self.deployments[spec.name] = d
            if old is not None:
                await old.pool.close()
        log.info("deployed %s (%s, digest %s, %d warm)", spec.name, spec.runtime,
                 prepared.digest[:12], pool.warm)
        return self.info(d)

    def check_limits(self, limits: P.Limits, timeout: float | None = None) -> None:
        """Refuse limits above this node's maxima (INVALID_ARGUMENT names the field)."""
        mx = self.maxima
        if mx is None:
            return
        if limits.memory_mb is not None and limits.memory_mb > mx.max_memory_mb:
            raise errors.InvalidArgument(f"limits.memory_mb = {limits.memory_mb} exceeds this "
                                         f"node's maximum of {mx.max_memory_mb}")
        for name, value in (("limits.timeout", limits.timeout), ("timeout", timeout)):
            if value is not None and value > mx.max_timeout:
                raise errors.InvalidArgument(f"{name} = {value:g} exceeds this node's maximum "
                                             f"of {mx.max_timeout:g}s")
        if limits.cpus is not None and limits.cpus > mx.max_cpus:
            raise errors.InvalidArgument(f"limits.cpus = {limits.cpus:g} exceeds this node's "
                                         f"maximum of {mx.max_cpus:g}")
        cap = self.max_output_mb
        if limits.max_output_mb is not None and cap is not None and limits.max_output_mb > cap:
            raise errors.InvalidArgument(f"limits.max_output_mb = {limits.max_output_mb} exceeds "
                                         f"this node's maximum of {cap} ([runtimes.process] "
                                         f"max_output_mb)")

    async def remove(self, name: str) -> None:
        d = self.deployments.pop(name, None)
        if d is None:
            raise errors.NotFound(f"function {name!r} is not deployed on node {self.node_id}")
        await d.pool.close()
        log.info("removed %s", name)

    def get(self, name: str) -> Deployment:
        d = self.deployments.get(name)
        if d is None:
            raise errors.NotFound(f"function {name!r} is not deployed on node {self.node_id}")
        return d

    @property
    def warm(self) -> int:
        return sum(d.pool.warm for d in self.deployments.values())

    # ------------------------------------------------------------ executions

    def new_execution(self, function: str, execution_id: str = "", trace_id: str = "") -> Execution:
        eid = execution_id or new_id()
        info = P.ExecutionInfo(execution_id=eid, function=function, status="pending",
                               node_id=self.node_id, trace_id=trace_id or eid,
                               submitted_at=time.time())
        ex = Execution(info)
        self.executions[eid] = ex
        while len(self.executions) > self.keep_executions:
            old_id, old = next(iter(self.executions.items()))
            if old.task is not None and not old.task.done():
                break  # never forget a running execution
            del self.executions[old_id]
        return ex

    def run_now(self, function: str, execution_id: str, trace_id: str, data: bytes, args: list,
                timeout: float | None):
        """The fast path: a warm instance and a runtime that can answer inline.

        Returns ``(info, output)`` or ``(None, slot)`` when the call has to go
        the async way (the slot, if >= 0, is already acquired for it). No Task,
        no Execution record: finished before the handler returns.
        """
        d = self.deployments[function]
        t0 = time.perf_counter()
        slot = d.pool.try_acquire()
        if slot < 0:
            return None, -1
        inst = d.pool.instances[slot]
        limits = d.spec.limits
        if timeout is not None:
            limits = msgspec.structs.replace(limits, timeout=timeout)
        err = exit_code = None
        usage = _NO_USAGE
        output = b""
        try:
            outcome = d.runtime.invoke_now(inst, data, args, limits)
        except errors.SpearError as exc:
            d.pool.release(slot, healthy=isinstance(exc, errors.FunctionError) and inst.reusable)
            status, err, exit_code = _failure(exc)
        except Exception as exc:  # noqa: BLE001 - a runtime bug fails the execution only
            d.pool.release(slot, healthy=False)
            log.exception("inline execution of %s failed inside Spear", function)
            status, err = "failed", P.ErrorInfo(code="INTERNAL", message=f"{type(exc).__name__}: {exc}")
        else:
            if outcome is None:
                return None, slot
            d.pool.release(slot)
            status, output, exit_code, usage = "succeeded", outcome.output, outcome.exit_code, outcome.usage
        t1 = time.perf_counter()
        d.invocations += 1
        self.counts[status] += 1
        m = self.metrics
        if m is not None:
            m.execution_finished(function, d.spec.runtime, status, 0.0, 0.0, t1 - t0, t1 - t0,
                                 err.code if err is not None else "")
        now = time.time()
        eid = execution_id or new_id()
        info = P.ExecutionInfo(
            execution_id=eid, function=function, status=status,
            node_id=self.node_id, error=err, exit_code=exit_code, usage=usage,
            trace_id=trace_id or eid, submitted_at=now - (t1 - t0), finished_at=now,
            timings=P.Timings(run=t1 - t0, total=t1 - t0))
        if status != "succeeded" or log.isEnabledFor(logging.DEBUG):
            self._log_end(info)
        return info, output

    @staticmethod
    def _log_end(info: P.ExecutionInfo) -> None:
        log.log(logging.INFO if info.status != "succeeded" else logging.DEBUG,
                "execution %s of %s %s in %.3f ms%s", info.execution_id, info.function,
                info.status, info.timings.total * 1e3,
                f": {info.error.code}: {info.error.message}" if info.error else "",
                extra={"trace_id": info.trace_id, "execution_id": info.execution_id,
                       "function": info.function, "status": info.status})

    async def run(self, ex: Execution, data: bytes, args: list, timeout: float | None,
                  on_log: Callable[[bytes], None] | None = None, slot: int = -1) -> Execution:
        """Run one execution to a terminal state; never raises (except cancel)."""
        t_submit = time.perf_counter()
        name = ex.info.function
        status, err, exit_code, usage, cold, output = "failed", None, None, P.ExecUsage(), 0.0, b""
        t_run = t_submit
        waited = 0.0  # time the runtime kept the call waiting (for a thread): queue, not run
        d = None
        # ``running`` was counted when the execution was admitted (synchronously,
        # so a burst of requests in one drain cannot overshoot the limit)
        try:
            d = self.get(name)
            limits = d.spec.limits
            if timeout is not None:
                limits = msgspec.structs.replace(limits, timeout=timeout)
            ex.info = msgspec.structs.replace(ex.info, status="running")
            slot, inst, cold = await d.pool.acquire(slot=slot)
            t_run = time.perf_counter()
            healthy = False
            try:
                outcome = await d.runtime.invoke(inst, data, args, limits, on_log)
                healthy = True
            except errors.FunctionError:
                # the user's code failed but the instance may be fine (the runtime
                # clears ``reusable`` when it is not)
                healthy = inst.reusable
                raise
            finally:
                d.pool.release(slot, healthy=healthy)
            status, output, exit_code, usage = "succeeded", outcome.output, outcome.exit_code, outcome.usage
            waited = outcome.queued
        except asyncio.CancelledError:
            status, err = "cancelled", P.ErrorInfo(code="CANCELLED", message="cancelled by request")
            raise
        except errors.SpearError as exc:
            status, err, exit_code = _failure(exc)
            q = exc.details.get("queued")
            waited = q if isinstance(q, float) else 0.0
        except Exception as exc:  # noqa: BLE001 - a runtime bug fails the execution, not the node
            log.exception("execution %s of %s failed inside Spear", ex.info.execution_id, name)
            err = P.ErrorInfo(code="INTERNAL", message=f"{type(exc).__name__}: {exc}")
        finally:
            self.running -= 1
            t_end = time.perf_counter()
            if d is not None:
                d.invocations += 1
            self.counts[status] += 1
            queue = max(0.0, t_run - t_submit - cold) + waited
            ran = max(0.0, t_end - t_run - waited)
            m = self.metrics
            if m is not None:
                m.execution_finished(name, d.spec.runtime if d is not None else "", status, queue,
                                     cold, ran, t_end - t_submit,
                                     err.code if err is not None else "")
            ex.info = msgspec.structs.replace(
                ex.info, status=status, error=err, exit_code=exit_code, usage=usage,
                cold=cold > 0, finished_at=time.time(),
                timings=P.Timings(queue=queue, cold_start=cold, run=ran,
                                  total=t_end - t_submit))
            ex.output = output
            ex.done.set()
            if status != "succeeded" or log.isEnabledFor(logging.DEBUG):
                self._log_end(ex.info)
        return ex

    # ------------------------------------------------------------ wire handlers

    def handlers(self, server) -> dict:
        """Message handlers for the Spearlet's ROUTER."""
        self.server = server
        return {
            P.DeployFunction: self.on_deploy,
            P.RemoveFunction: self.on_remove,
            P.ListFunctions: self.on_list,
            P.Invoke: self.on_invoke,
            P.GetExecution: self.on_get_execution,
            P.CancelExecution: self.on_cancel,
        }

    async def on_deploy(self, ident, msg: P.DeployFunction, payload):
        spec = msg.spec
        if payload is not None:
            spec = msgspec.structs.replace(spec, artifact=bytes(payload))
        return P.Deployed(id=msg.id, function=await self.deploy(spec))

    async def on_remove(self, ident, msg: P.RemoveFunction, payload):
        await self.remove(msg.name)
        return P.Ok(id=msg.id)

    def on_list(self, ident, msg: P.ListFunctions, payload):
        return P.FunctionList(id=msg.id, functions=[self.info(d) for d in self.deployments.values()])

    def on_invoke(self, ident, msg: P.Invoke, payload):
        if msg.execution_id:
            # ids are the node's (and the SMS's): a client naming one could pose as an
            # execution the SMS dispatches here later and have its own run reported
            raise errors.InvalidArgument("clients do not choose execution ids")
        if self.draining:
            if self.metrics is not None:
                self.metrics.rejected("UNAVAILABLE")
            raise errors.Unavailable(f"node {self.node_id} is stopping")
        if msg.function not in self.deployments:
            raise errors.NotFound(f"function {msg.function!r} is not deployed on node {self.node_id}")
        if self.running >= self.max_concurrency:
            if self.metrics is not None:
                self.metrics.rejected("RESOURCE_EXHAUSTED")
            raise errors.ResourceExhausted(
                f"node {self.node_id} is running {self.running} executions (limit {self.max_concurrency})")
        if msg.timeout is not None and self.maxima is not None:
            self.check_limits(P.Limits(), msg.timeout)
        data = payload if payload is not None else b""
        slot = -1
        if msg.mode == "sync":
            info, out = self.run_now(msg.function, msg.execution_id, msg.trace_id, data, msg.args,
                                     msg.timeout)
            if info is not None:
                return P.Result(id=msg.id, execution=info), out
            slot = out
        self.running += 1
        ex = self.new_execution(msg.function, msg.execution_id, msg.trace_id)
        if msg.mode == "sync":
            return self._sync(msg, ex, data, slot=slot)
        if msg.mode == "async":
            ex.task = asyncio.ensure_future(self._guarded(ex, data, msg.args, msg.timeout, None))
            return P.Accepted(id=msg.id, execution_id=ex.info.execution_id)
        seq = [0]

        def on_log(chunk: bytes) -> None:
            seq[0] += 1
            self.server.reply(ident, P.LogChunk(id=msg.id, execution_id=ex.info.execution_id,
                                                data=bytes(chunk), seq=seq[0]))

        return self._sync(msg, ex, data, on_log)

    async def _sync(self, msg: P.Invoke, ex: Execution, data: bytes, on_log=None, slot=-1):
        ex.task = asyncio.current_task()
        await self._guarded(ex, data, msg.args, msg.timeout, on_log, slot)
        return P.Result(id=msg.id, execution=ex.info), ex.output

    async def _guarded(self, ex, data, args, timeout, on_log, slot=-1) -> None:
        try:
            await self.run(ex, data, args, timeout, on_log, slot)
        except asyncio.CancelledError:
            pass  # run() recorded the cancellation

    async def on_get_execution(self, ident, msg: P.GetExecution, payload):
        ex = self.executions.get(msg.execution_id)
        if ex is None:
            raise errors.NotFound(f"execution {msg.execution_id!r} not found on node {self.node_id}")
        if msg.wait > 0 and not ex.done.is_set():
            try:
                await asyncio.wait_for(ex.done.wait(), msg.wait)
            except asyncio.TimeoutError:
                pass
        return P.Result(id=msg.id, execution=ex.info), ex.output

    def on_cancel(self, ident, msg: P.CancelExecution, payload):
        ex = self.executions.get(msg.execution_id)
        if ex is None:
            raise errors.NotFound(f"execution {msg.execution_id!r} not found on node {self.node_id}")
        if ex.done.is_set():
            raise errors.InvalidArgument(
                f"execution {msg.execution_id} already finished ({ex.info.status})")
        if ex.task is not None:
            ex.task.cancel()
        return P.Ok(id=msg.id)

    # ------------------------------------------------------------ SMS dispatch

    async def ensure(self, name: str, digest: str, fetch) -> None:
        """Make sure version ``digest`` of ``name`` is deployed, fetching it if not."""
        d = self.deployments.get(name)
        if d is not None and d.sms_digest == digest:
            return
        lock = self._deploying.setdefault("fetch:" + name, asyncio.Lock())
        async with lock:
            d = self.deployments.get(name)
            if d is not None and d.sms_digest == digest:
                return
            spec, got = await fetch(name)
            await self.deploy(spec, sms_digest=got)

    def dispatch_now(self, msg: P.Dispatch, payload, send) -> int | None:
        """Fast path of an SMS dispatch: answered inline when possible.

        Returns None when done, else the slot already taken (or -1) for
        :meth:`run_dispatch` to continue with.
        """
        if self.draining or self.running >= self.max_concurrency:
            code = "UNAVAILABLE" if self.draining else "RESOURCE_EXHAUSTED"
            if self.metrics is not None:
                self.metrics.rejected(code)
            send(P.ErrorReply(id=msg.id, code=code, message=(
                f"node {self.node_id} is stopping" if self.draining
                else f"node {self.node_id} is at its concurrency limit")))
            return None
        if msg.timeout is not None and self.maxima is not None:
            try:  # the node's maxima hold for timeouts sent through the SMS too
                self.check_limits(P.Limits(), msg.timeout)
            except errors.SpearError as exc:
                send(P.ErrorReply(id=msg.id, code=exc.code, message=exc.message))
                return None
        known = self.executions.get(msg.execution_id)
        if known is not None:
            # a repeated dispatch: report what we have, never run it twice
            if known.done.is_set():
                send(P.Result(id=msg.id, execution=known.info), known.output)
            return None
        d = self.deployments.get(msg.function)
        out = -1
        if d is not None and d.sms_digest == msg.digest and not msg.stream:
            info, out = self.run_now(msg.function, msg.execution_id, msg.trace_id,
                                     payload if payload is not None else b"", msg.args,
                                     msg.timeout)
            if info is not None:
                send(P.Result(id=msg.id, execution=info), out)
                return None
        self.running += 1  # admitted: run_dispatch (or its early exits) gives it back
        return out

    async def run_dispatch(self, msg: P.Dispatch, payload, send, fetch, slot: int = -1) -> None:
        """Run an execution the SMS placed here; the reply goes back on the link.

        Admission (draining, concurrency) was decided by :meth:`dispatch_now`.
        """
        eid = msg.execution_id
        self.dispatched.add(eid)
        try:
            try:
                await self.ensure(msg.function, msg.digest, fetch)
            except Exception as exc:  # noqa: BLE001 - any failure: give the slot back, answer
                self.running -= 1  # never reached run()
                if not isinstance(exc, errors.SpearError):
                    log.exception("preparing %s for execution %s failed", msg.function, eid)
                    exc = errors.Internal(f"{type(exc).__name__}: {exc}")
                send(P.ErrorReply(id=msg.id, code=exc.code, message=f"deploy failed: {exc.message}"))
                return
            ex = self.new_execution(msg.function, eid, msg.trace_id)
            ex.task = asyncio.current_task()
            on_log = None
            if msg.stream:
                seq = [0]

                def on_log(chunk: bytes) -> None:
                    seq[0] += 1
                    send(P.LogChunk(id=msg.id, execution_id=eid, data=bytes(chunk), seq=seq[0]))

            data = bytes(payload) if payload is not None else b""
            await self._guarded(ex, data, msg.args, msg.timeout, on_log, slot)
            slot = -1
            if self.draining and ex.info.status == "cancelled":
                # stopped by our own shutdown, not by a user: hand it back
                send(P.ErrorReply(id=msg.id, code="UNAVAILABLE",
                                  message=f"node {self.node_id} stopped before it finished",
                                  details={"started": "1"}))
                return
            send(P.Result(id=msg.id, execution=ex.info), ex.output)
        finally:
            self.dispatched.discard(eid)
            if slot >= 0:  # never reached run(): give the instance back
                self.deployments[msg.function].pool.release(slot)

    # ------------------------------------------------------------ upkeep

    async def evict_loop(self, period: float = 5.0) -> None:
        while True:
            await asyncio.sleep(period)
            for d in list(self.deployments.values()):
                try:
                    n = await d.pool.evict_idle()
                    if n:
                        log.info("evicted %d idle instance(s) of %s", n, d.spec.name)
                except Exception:  # noqa: BLE001
                    log.exception("eviction failed for %s", d.spec.name)

    async def close(self) -> None:
        """Cancel running executions and destroy every instance."""
        for ex in list(self.executions.values()):
            if ex.task is not None and not ex.task.done():
                ex.task.cancel()
        for d in list(self.deployments.values()):
            await d.pool.close()
        self.deployments.clear()
