"""The public operations of both clients, written once, and what they return.

:class:`Api` builds every request message and names the reply extractor;
a transport (:mod:`.aio`, :mod:`.blocking`) provides ``_call``, ``_submit``
and ``_next_id``. :class:`ExecutionResult` is what an invocation returns.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from typing import Any, Callable

import msgspec

from .. import errors, protocol as P, tracing


def _field(name: str, *, as_list: bool = False) -> Callable[[Any, Any], Any]:
    """A reply extractor: the reply's ``name`` field (copied to a list for ``as_list``)."""
    if as_list:
        return lambda reply, payload: list(getattr(reply, name))
    return lambda reply, payload: getattr(reply, name)


#: artifacts this large are named by SHA-256 before their bytes are sent
BY_REFERENCE = 64 * 1024


def not_stored(exc: errors.SpearError) -> bool:
    """Whether a deploy naming its artifact alone was refused for lack of the bytes."""
    return isinstance(exc, errors.NotFound) and exc.message.startswith("artifact ")


_nodes = _field("nodes", as_list=True)
_node = _field("node")
function_info = _field("function")
_functions = _field("functions", as_list=True)
_spec = _field("spec")
accepted = _field("execution_id")


def _whole(reply, payload):
    return reply


def _none(reply, payload):
    return None


def _exec_page(reply, payload):
    return list(reply.executions), reply.total


class ExecutionResult:
    """The outcome of an execution: its record plus the output bytes."""

    __slots__ = ("info", "output")

    def __init__(self, info: P.ExecutionInfo, output: bytes) -> None:
        self.info = info
        self.output = output

    @property
    def ok(self) -> bool:
        return self.info.status == "succeeded"

    @property
    def status(self) -> str:
        return self.info.status

    @property
    def execution_id(self) -> str:
        return self.info.execution_id

    def raise_for_status(self) -> "ExecutionResult":
        """Raise the typed error of a failed execution; return self otherwise."""
        if self.info.error is not None and not self.ok:
            raise errors.from_code(self.info.error.code, self.info.error.message)
        return self

    def __repr__(self) -> str:
        return f"ExecutionResult({self.info.status}, {self.output[:60]!r})"


def result_of(reply, payload):
    return ExecutionResult(reply.execution, bytes(payload) if payload is not None else b"")


#: what ``protocol.TraceId`` accepts (its constraint, read from the type itself)
_TRACE_ID = re.compile(P.TraceId.__metadata__[0].pattern)
_IDEM = re.compile(r"^[\x21-\x7e]{1,128}\Z")
#: what a submit retries on: the SMS may or may not have the execution
RETRYABLE = (errors.DeadlineExceeded, errors.Unavailable)


class Api:
    """The public operations, written once for both transports.

    ``_call(target, msg, payload, extract, timeout)`` is provided by the
    transport: it returns the extracted value (blocking) or an awaitable.
    """

    timeout: float

    def _next_id(self) -> int:
        raise NotImplementedError

    def _call(self, target, msg, payload, extract, timeout):
        raise NotImplementedError

    def _deploy(self, target, msg, artifact, by_ref, timeout):
        raise NotImplementedError

    def _invoke_msg(self, function, data, args, mode, timeout, trace_id, idempotency_key="",
                    traceparent="", tracestate=""):
        """The Invoke message and its payload frame (None when the input is empty).

        A malformed ``traceparent`` is dropped (the SMS starts a new trace), never
        refused: tracing must not lose a call; ``tracestate`` is bounded."""
        if isinstance(data, str):
            data = data.encode()
        if trace_id and not _TRACE_ID.match(trace_id):
            # a Struct built in Python is not validated: refuse here, not after a round trip
            raise errors.InvalidArgument(
                f"trace_id {trace_id[:60]!r} is not valid: up to 128 of A-Z a-z 0-9 . _ : / + = -")
        if idempotency_key and not _IDEM.match(idempotency_key):
            raise errors.InvalidArgument(
                f"idempotency_key {idempotency_key[:60]!r} is not valid: 1-128 printable ASCII, no spaces")
        if traceparent:
            traceparent, tracestate = tracing.incoming(traceparent, tracestate)
        msg = P.Invoke(id=self._next_id(), function=function, args=list(args or ()),
                       mode=mode, timeout=timeout, trace_id=trace_id,
                       idempotency_key=idempotency_key, traceparent=traceparent,
                       tracestate=tracestate if traceparent else "")
        return msg, data or None

    # ------------------------------------------------------------ any daemon

    def ping(self, *, node: str | None = None, timeout: float | None = None):
        """Liveness probe of the SMS (or of the Spearlet at ``node``)."""
        return self._call(node, P.Ping(id=self._next_id()), None, _whole, timeout)

    # ------------------------------------------------------------ NodeService

    def nodes(self, state: str | None = None, *, timeout: float | None = None):
        """All registered nodes (optionally only those in ``state``)."""
        return self._call(None, P.ListNodes(id=self._next_id(), state=state), None, _nodes, timeout)

    def node(self, node_id: str, *, timeout: float | None = None):
        """One node by id or name; raises NotFound."""
        return self._call(None, P.GetNode(id=self._next_id(), node_id=node_id), None, _node, timeout)

    def drain(self, node_id: str, drain: bool = True, *, timeout: float | None = None):
        """Place no new work on a node (``drain=False``: resume); its NodeInfo after."""
        msg = P.DrainNode(id=self._next_id(), node_id=node_id, drain=drain)
        return self._call(None, msg, None, _node, timeout)

    # ------------------------------------------------------------ functions

    def deploy(self, spec: P.FunctionSpec, *, node: str | None = None, timeout: float | None = None):
        """Deploy a function (directly on ``node``); returns its FunctionInfo.

        The artifact travels as a raw payload frame, not inside the message,
        and is named by its SHA-256. To the SMS, an artifact of
        :data:`BY_REFERENCE` bytes or more is first named alone: the bytes
        go only if the SMS does not store them yet.
        """
        artifact = spec.artifact
        if artifact is not None:
            sha = spec.artifact_sha256 or hashlib.sha256(artifact).hexdigest()
            spec = msgspec.structs.replace(spec, artifact=None, artifact_sha256=sha)
        by_ref = artifact is not None and node is None and len(artifact) >= BY_REFERENCE
        return self._deploy(node, P.DeployFunction(id=self._next_id(), spec=spec), artifact,
                            by_ref, timeout or max(self.timeout, 60.0))

    def remove(self, name: str, *, node: str | None = None, timeout: float | None = None):
        """Remove a deployed function."""
        return self._call(node, P.RemoveFunction(id=self._next_id(), name=name), None, _none, timeout)

    def functions(self, *, node: str | None = None, timeout: float | None = None):
        """The functions deployed (on ``node``)."""
        return self._call(node, P.ListFunctions(id=self._next_id()), None, _functions, timeout)

    # ------------------------------------------------------------ executions

    def invoke(
        self,
        function: str,
        data: bytes | str = b"",
        *,
        args: list | None = None,
        node: str | None = None,
        timeout: float | None = None,
        trace_id: str = "",
        idempotency_key: str = "",
        traceparent: str = "",
        tracestate: str = "",
    ):
        """Run ``function`` and return its :class:`ExecutionResult` (sync mode).

        ``idempotency_key``: calling again with the same key (after a timeout,
        say) waits for the first execution's result instead of starting another.
        ``traceparent``/``tracestate``: the W3C trace context the execution joins
        (its spans' parent; the function sees them as TRACEPARENT/TRACESTATE);
        a malformed one is replaced by a new trace.

        A failed execution is a result with ``status != "succeeded"``, not an
        exception; call ``raise_for_status()`` to turn it into one.
        """
        msg, data = self._invoke_msg(function, data, args, "sync", timeout, trace_id,
                                     idempotency_key, traceparent, tracestate)
        wait = (timeout or self.timeout) + 5.0
        return self._call(node, msg, data, result_of, wait)

    def submit(
        self,
        function: str,
        data: bytes | str = b"",
        *,
        args: list | None = None,
        node: str | None = None,
        timeout: float | None = None,
        trace_id: str = "",
        idempotency_key: str = "",
        retries: int = 2,
        traceparent: str = "",
        tracestate: str = "",
    ):
        """Start ``function`` asynchronously; returns the execution id.

        Safe to retry: the submission carries an idempotency key (yours, or a
        random one), and when no answer comes (DEADLINE_EXCEEDED) or the SMS
        is unavailable it is sent again with the same key up to ``retries``
        times, so the work runs once however many answers were lost. Reusing
        your own key later (even after an SMS restart) returns the same
        execution id. ``traceparent``/``tracestate``: as for :meth:`invoke`.
        """
        key = idempotency_key or (uuid.uuid4().hex if retries and node is None else "")
        msg, data = self._invoke_msg(function, data, args, "async", timeout, trace_id, key,
                                     traceparent, tracestate)
        return self._submit(node, msg, data, retries if key else 0)

    def execution(self, execution_id: str, *, wait: float = 0.0, node: str | None = None,
                  timeout: float | None = None):
        """An execution's current record; ``wait`` seconds for it to finish.
        ``execution_id`` (here, in :meth:`wait` and :meth:`cancel`) may be any
        unique prefix of 8+ hex digits through the SMS (a node takes whole ids);
        the record names the whole id."""
        msg = P.GetExecution(id=self._next_id(), execution_id=execution_id, wait=wait)
        return self._call(node, msg, None, result_of, (timeout or self.timeout) + wait)

    def wait(self, execution_id: str, *, timeout: float = 60.0, node: str | None = None):
        """Wait until the execution reaches a terminal state."""
        return self.execution(execution_id, wait=timeout, node=node)

    def executions(self, *, function: str = "", status: str | None = None, node_id: str = "",
                   limit: int = 100, offset: int = 0, timeout: float | None = None):
        """A page of execution records from the SMS, newest first: ``(items, total)``
        (:meth:`execution_page` takes more filters, and pages by cursor)."""
        msg = P.ListExecutions(id=self._next_id(), function=function, status=status,
                               node_id=node_id, limit=limit, offset=offset)
        return self._call(None, msg, None, _exec_page, timeout)

    def execution_page(self, *, function: str = "", status: str | None = None, node_id: str = "",
                       since: float = 0.0, until: float = 0.0, prefix: str = "", cursor: str = "",
                       limit: int = 100, offset: int = 0, timeout: float | None = None):
        """A page of execution records as the SMS answers it: the ``ExecutionList``
        with ``total`` and ``next_cursor`` (pass it as ``cursor`` for the next page)."""
        msg = P.ListExecutions(id=self._next_id(), function=function, status=status,
                               node_id=node_id, since=since, until=until, prefix=prefix,
                               cursor=cursor, limit=limit, offset=offset)
        return self._call(None, msg, None, _whole, timeout)

    def function(self, name: str, *, timeout: float | None = None):
        """A registered function's spec (without artifact bytes) from the SMS."""
        return self._call(None, P.GetFunction(id=self._next_id(), name=name), None, _spec, timeout)

    def stats(self, *, timeout: float | None = None):
        """Cluster totals, reservations and execution counts (ResourceService)."""
        return self._call(None, P.Stats(id=self._next_id()), None, _whole, timeout)

    def function_stats(self, window: float = 3600.0, *, slices: int = 12, function: str = "",
                       timeout: float | None = None):
        """Per-function figures (list of FunctionStat) of the executions submitted in the
        last ``window`` seconds, in ``slices`` equal slices; only ``function``'s if named."""
        msg = P.Stats(id=self._next_id(), window=window, slices=slices, function=function)
        return self._call(None, msg, None, _field("functions", as_list=True), timeout)

    def cancel(self, execution_id: str, *, node: str | None = None, timeout: float | None = None):
        """Cancel an execution that has not finished."""
        msg = P.CancelExecution(id=self._next_id(), execution_id=execution_id)
        return self._call(node, msg, None, _none, timeout)


def security_of(security):
    """Accept a Security, a SecurityConfig, or None (open)."""
    if security is None:
        return None
    from ..mesh.security import Security

    if not isinstance(security, Security):
        security = Security.from_config(security)
    return security if security.enabled else None


def key_of(nodes, address: str) -> bytes | None:
    """The CURVE public key of the node listening at ``address``, if the SMS knows one."""
    for n in nodes:
        if n.address == address and n.public_key:
            return n.public_key.encode()
    return None
