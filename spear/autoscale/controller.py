"""The autoscaler's loop: look at the SMS, ask the policy, act through the providers.

Every ``[autoscaler] tick`` seconds :class:`Controller` reads the SMS through
the public :class:`~spear.client.AsyncClient` (``stats`` for the queue,
``nodes`` for the cluster, a page of recent executions for which functions
are busy and where they ran), turns it into an :class:`.policy.Observation`,
and carries out the :class:`.policy.Decision` list: ``scale_up`` creates
nodes (labelled ``spear.owner=autoscaler``), ``drain`` and ``resume`` go to
the SMS, ``remove`` destroys a drained node. Each decision is logged and
counted (Prometheus gauges and counters on ``[autoscaler] metrics_port``).

Each node type (``[autoscaler.types.NAME]``, or the one ``default`` type) has
its provider; when one refuses a node, the node is started as the next type
in cost order that has room.

A node the provider created is "starting" until a node of that name
registers; one that never does within :data:`START_TIMEOUT` is destroyed. On
start the provider's :meth:`list` gives back the nodes of an earlier run.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge

from .. import errors, protocol as P
from ..config import AutoscalerConfig
from .policy import Decision, NodeView, Observation, Policy, Settings
from .providers.base import NodeHandle, NodeType, load

log = logging.getLogger("spear.autoscale")

#: seconds a created node has to register before it is given up on
START_TIMEOUT = 60.0
#: executions read per tick to learn which functions are busy and where they ran
RECENT_LIMIT = 1000
#: the label naming a node's type (set by every provider on the nodes it starts)
TYPE_LABEL = "spear.node-type"


def node_types_of(cfg: AutoscalerConfig) -> list[NodeType]:
    """The node types of ``[autoscaler]``: its ``types`` tables, or else the one
    type ``default`` its single-type keys describe."""
    if not cfg.types:
        return [NodeType(name="default", provider=cfg.provider, cores=cfg.node_cores,
                         memory_mb=cfg.node_memory_mb, min_nodes=0, max_nodes=cfg.max_nodes,
                         options=dict(cfg.options))]
    return [NodeType(name=name, provider=t.provider, cores=t.cores, memory_mb=t.memory_mb,
                     min_nodes=t.min_nodes, max_nodes=t.max_nodes, cost=t.cost,
                     options=dict(t.options))
            for name, t in cfg.types.items()]


def build_providers(cfg: AutoscalerConfig, sms: str, types: list[NodeType]) -> dict:
    """One provider per node type; types with the same provider and options share it
    (so an earlier run's nodes are listed once)."""
    made: dict[tuple, object] = {}
    out = {}
    for t in types:
        key = (t.provider, tuple(sorted(t.options.items())))
        if key not in made:
            made[key] = load(t.provider)(sms=sms, workdir=Path(cfg.data) / t.provider,
                                         options=dict(t.options))
        out[t.name] = made[key]
    return out


def settings_of(cfg: AutoscalerConfig) -> Settings:
    """The policy's knobs from ``[autoscaler]``."""
    return Settings(min_nodes=cfg.min_nodes, max_nodes=cfg.max_nodes,
                    scale_down_idle_s=cfg.scale_down_idle_s, protect_idle_s=cfg.protect_idle_s,
                    up_cooldown=cfg.up_cooldown, down_cooldown=cfg.down_cooldown,
                    up_ticks=cfg.up_ticks)


class _Metrics:
    """The controller's figures, on a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.decisions = Counter("spear_autoscaler_decisions", "Decisions carried out, by action.",
                                 ["action"], registry=self.registry)
        self.failures = Counter("spear_autoscaler_provider_errors",
                                "Provider calls that failed, by operation.", ["op"],
                                registry=self.registry)
        self.nodes = Gauge("spear_autoscaler_nodes", "Nodes the autoscaler runs, by state.",
                           ["state"], registry=self.registry)
        self.queued = Gauge("spear_autoscaler_queued",
                            "Executions waiting in the SMS at the last tick.", registry=self.registry)


class Controller:
    """Runs the policy against one SMS with a provider per node type.

    ``providers``: node type name -> provider (default: built from ``cfg``);
    ``clock``: wall seconds (tests may fake it).
    """

    def __init__(self, cfg: AutoscalerConfig, client, providers: dict | None = None, *,
                 clock=time.time) -> None:
        self.cfg = cfg
        self.client = client
        types = node_types_of(cfg)
        self.types = {t.name: t for t in types}
        self.providers = providers if providers is not None else build_providers(cfg, client.sms, types)
        self.policy = Policy(settings_of(cfg), types)
        self.clock = clock
        self.handles: dict[str, NodeHandle] = {}   # node name -> what the provider started
        self._provider_of: dict[str, object] = {}  # node name -> the provider that started it
        self.metrics = _Metrics()
        self._recovered = False

    async def recover(self) -> None:
        """Take back the nodes an earlier run of the provider left running."""
        seen = set()
        for provider in self.providers.values():
            if id(provider) in seen:
                continue
            seen.add(id(provider))
            for h in await provider.list():
                if h.name not in self.handles:
                    self.handles[h.name] = h
                    self._provider_of[h.name] = provider
        self._recovered = True
        if self.handles:
            log.info("autoscaler: %d node(s) of an earlier run found: %s", len(self.handles),
                     ", ".join(sorted(self.handles)))

    async def observe(self) -> Observation:
        """What the SMS reports now, as the policy reads it."""
        now = self.clock()
        stats = await self.client.stats()
        nodes = await self.client.nodes()
        page = await self.client.execution_page(since=max(0.0, now - self.cfg.protect_idle_s),
                                                limit=RECENT_LIMIT)
        warm: dict[str, set[str]] = {}
        active: dict[str, float] = {}
        inflight: dict[str, int] = {}  # the SMS's records: ahead of a node's next heartbeat
        for ex in page.executions:
            if ex.node_id:
                warm.setdefault(ex.node_id, set()).add(ex.function)
                at = ex.finished_at or ex.submitted_at
                active[ex.node_id] = max(active.get(ex.node_id, 0.0), at)
                if ex.status not in P.TERMINAL:
                    inflight[ex.node_id] = inflight.get(ex.node_id, 0) + 1
        views = tuple(NodeView(
            node_id=n.node_id, name=n.name, node_type=n.labels.get(TYPE_LABEL, ""),
            owned=n.name in self.handles, state=n.state,
            running=max(n.usage.running, inflight.get(n.node_id, 0)),
            slots=n.capacity.slots, cores=n.capacity.cores,
            warm=frozenset(warm.get(n.node_id, ())), last_active=active.get(n.node_id, 0.0))
            for n in nodes)
        starting: dict[str, int] = {}
        seen = {v.name for v in views}
        for h in self.handles.values():
            if h.name not in seen:
                starting[h.node_type] = starting.get(h.node_type, 0) + 1
        return Observation(now=now, queued=stats.queued, queued_cores=stats.queued_cores,
                           nodes=views, starting=starting,
                           busy=frozenset(ex.function for ex in page.executions))

    async def tick(self) -> list[Decision]:
        """One look and the actions it leads to; the decisions taken."""
        if not self._recovered:
            await self.recover()
        obs = await self.observe()
        if await self._reap(obs):
            obs = await self.observe()  # without the nodes given up on
        decisions = self.policy.tick(obs)
        for d in decisions:
            await self._act(d)
        self._gauges(obs)
        return decisions

    async def _act(self, d: Decision) -> None:
        log.info("autoscaler: %s %s%s (%s)", d.action, d.name or d.node_type,
                 f" x{d.count}" if d.count else "", d.reason)
        try:
            if d.action == "scale_up":
                await self._create(self.types[d.node_type], d.count)
            elif d.action in ("drain", "resume"):
                await self.client.drain(d.node_id, d.action == "drain")
            elif d.action == "remove":
                await self._destroy(d.name)
        except errors.SpearError as exc:
            log.warning("autoscaler: %s %s failed: %s: %s", d.action, d.name or d.node_type,
                        exc.code, exc.message)
            self.metrics.failures.labels(d.action).inc()
            return
        self.metrics.decisions.labels(d.action).inc()

    async def _create(self, node_type: NodeType, count: int) -> None:
        """Start ``count`` nodes of ``node_type``; a type whose provider refuses is
        passed over for the next one in cost order that has room (raises when all refuse)."""
        order = self.policy.types
        start = next(i for i, t in enumerate(order) if t.name == node_type.name)
        candidates = order[start:] + order[:start]
        refused: list[str] = []
        for _ in range(count):
            for t in candidates:
                if t.name in refused or not self._has_room(t):
                    continue
                name = f"{self.cfg.node_prefix}-{uuid.uuid4().hex[:8]}"
                provider = self.providers[t.name]
                try:
                    handle = await provider.create(t, name)
                except (errors.Unavailable, errors.ResourceExhausted) as exc:
                    log.warning("autoscaler: node type %s (%s) refused a node: %s", t.name,
                                t.provider, exc.message)
                    self.metrics.failures.labels("create").inc()
                    refused.append(t.name)
                    continue
                if t.name != node_type.name:
                    log.info("autoscaler: started %s as node type %s instead of %s",
                             handle.name, t.name, node_type.name)
                # the name the node registers under: a kubernetes pod joins under its pod name
                self.handles[handle.name] = handle
                self._provider_of[handle.name] = provider
                break
            else:
                raise errors.Unavailable(f"every node type refused a node: {', '.join(refused)}"
                                         if refused else "no node type has room for a node")

    def _has_room(self, t: NodeType) -> bool:
        return sum(1 for h in self.handles.values() if h.node_type == t.name) < t.max_nodes

    async def _destroy(self, name: str) -> None:
        handle = self.handles.get(name)
        if handle is not None:
            provider = self._provider_of.get(name) or self.providers[handle.node_type]
            await provider.destroy(handle)
            del self.handles[name]
            self._provider_of.pop(name, None)

    async def _reap(self, obs: Observation) -> bool:
        """Destroy nodes of ours that died (gone in the SMS) or never registered; True if any."""
        state = {n.name: n.state for n in obs.nodes}
        reaped = False
        for name, h in list(self.handles.items()):
            never = name not in state and obs.now - h.created_at > START_TIMEOUT
            if state.get(name) == "gone" or never:
                log.warning("autoscaler: node %s %s; destroying it", name,
                            "is gone" if not never else f"did not register in {START_TIMEOUT:g}s")
                reaped = True
                try:
                    await self._destroy(name)
                except errors.SpearError as exc:
                    self.metrics.failures.labels("destroy").inc()
                    log.warning("autoscaler: destroying %s failed: %s", name, exc.message)
        return reaped

    def _gauges(self, obs: Observation) -> None:
        """The node gauges as they stand after this tick's actions."""
        m = self.metrics
        m.queued.set(obs.queued)
        state = {n.name: n.state for n in obs.nodes}
        for s in ("ready", "draining", "unhealthy"):
            m.nodes.labels(s).set(sum(1 for name in self.handles if state.get(name) == s))
        m.nodes.labels("starting").set(sum(1 for name in self.handles if name not in state))

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until ``stop`` is set; an SMS that does not answer is retried next tick."""
        while not stop.is_set():
            try:
                await self.tick()
            except (errors.DeadlineExceeded, errors.Unavailable) as exc:
                log.warning("autoscaler: SMS not reachable (%s); next try in %gs",
                            exc.message, self.cfg.tick)
            except Exception:  # a provider SDK's own error: one tick lost, not the autoscaler
                log.exception("autoscaler: tick failed; next try in %gs", self.cfg.tick)
            try:
                await asyncio.wait_for(stop.wait(), self.cfg.tick)
            except asyncio.TimeoutError:
                pass

    async def shutdown(self) -> None:
        """Destroy every node this controller runs (on exit, unless told to keep them)."""
        if self.handles:
            log.info("autoscaler: stopping %d node(s)", len(self.handles))
        for name in list(self.handles):
            try:
                await self._destroy(name)
            except errors.SpearError as exc:
                log.warning("autoscaler: destroying %s failed: %s", name, exc.message)


async def serve(cfg, *, keep_nodes: bool = False) -> None:
    """Run the autoscaler of ``cfg`` (a whole :class:`spear.config.Config`) against
    ``[global] sms`` until SIGTERM or SIGINT; then destroy its nodes unless
    ``keep_nodes`` (a later run takes them back)."""
    import signal

    from ..client import AsyncClient

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    a = cfg.autoscaler
    async with AsyncClient(cfg.global_.sms, timeout=cfg.global_.timeout, security=cfg.security) as client:
        ctl = Controller(a, client)
        server = None
        if a.metrics_port >= 0:
            from ..metrics.registry import MetricsServer

            server = MetricsServer(ctl.metrics.registry, a.metrics_host, a.metrics_port)
            log.info("autoscaler: metrics on %s", server.url)
        log.info("autoscaler: node types %s, %d..%d nodes, SMS %s",
                 ", ".join(f"{t.name} ({t.provider})" for t in ctl.policy.types),
                 a.min_nodes, a.max_nodes, cfg.global_.sms)
        try:
            await ctl.run(stop)
        finally:
            if not keep_nodes:
                await ctl.shutdown()
            if server is not None:
                await asyncio.to_thread(server.close)
    log.info("autoscaler: stopped")
