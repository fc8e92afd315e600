"""The ``process`` runtime itself: the Runtime that ties spec, sandbox, runs and workers.

:class:`ProcessRuntime` prepares a spec into a :class:`~.spec.Plan`
(:mod:`.spec`, :mod:`.sandbox`), creates one-shot handles (:mod:`.oneshot`)
or pooled workers (:mod:`.workers`), works out the bounds of each call from
the call's limits, the function's own and the node's defaults (applied by
:mod:`.limits`), and at close ends every process it started. What a
SIGKILLed Spearlet left running is recorded in ``state_dir`` and ended by
:meth:`ProcessRuntime.reap_leftovers` at the next start (see :mod:`.leftovers`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
import tempfile

from ... import errors
from ...protocol import FunctionSpec, Limits
from ...tracing import env as trace_env
from ..base import Instance, LogSink, Outcome, Prepared, Runtime
from ..hostpaths import HostPaths
from . import cgroups as cg
from .codecache import CodeCache, default_cache_dir, make_dirs, write_owner
from .host import Host, close_host, open_host
from .limits import Bounds
from .oneshot import OneShot, run_oneshot
from .pyenvs import PyEnvs
from .sandbox import (FUNCTION_UID_BASE, PER_FUNCTION, Sandbox, User, denied, python_version,
                      resolve_user)
from .spec import DEFAULT_ENV, Planner, Plan, rmtree
from .streams import MAX_OUTPUT, MIB
from .workers import Worker

#: how a grant refused for reaching the code cache names it
CACHE_WHAT = "the process runtime's code cache (every tenant's code and environments)"

log = logging.getLogger(__name__)
_VERSION = re.compile(r"^(\d+)\.(\d+)\Z")


class ProcessRuntime(Runtime):
    """Run functions as processes: one-shot commands, pooled workers, Python handlers.

    ``user``: who functions run as. ``"auto"`` (default): ``nobody`` when the
    Spearlet is root, else the Spearlet's own user; ``None`` or ``""``: the
    Spearlet's own user; ``"per-function"``: a user of its own for each function
    (needs root, see :meth:`.sandbox.Sandbox.user_for`); a name or uid: that user
    (needs root).
    ``strict_network``: when a function with ``limits.network = false`` cannot
    get a network namespace here, refuse it (``Unavailable``, the default) or,
    if False, run it with network after logging one warning.
    ``host_paths``: where a ``workdir`` may be (see :mod:`..hostpaths`); none
    by default, so only functions without one (a fresh temporary directory)
    deploy.
    ``max_output_mb``: the node's largest output of a call (at most, and by
    default, the wire's 64 MiB payload cap); ``limits.max_output_mb`` of a
    function may lower it.
    ``default_pids``: pids limit of executions whose function sets none
    (applied where there is a pids cgroup controller).
    ``cgroups``: ``"auto"`` (use them where they work, else rlimits with a
    warning), ``"required"`` (the runtime is unavailable without them) or
    ``"off"`` (rlimits only).
    ``state_dir``: where the record of started processes is kept (the node's
    data directory), so that :meth:`reap_leftovers` of a restarted Spearlet
    ends what a killed one left running. None: no record.
    ``cache_dir``: where code bundles are unpacked (``code/``) and Python
    environments built (``envs/``); None: :func:`.codecache.default_cache_dir`
    of ``data_dir`` (a temporary directory, removed at close, without one).
    ``installer``, ``index_url``, ``env_build_timeout``, ``env_ttl``, ``envs_max_mb``,
    ``envs_min_free_mb``,
    ``installer_env``: how environments are built and kept (see
    :class:`.pyenvs.PyEnvs`); ``node``: the node's id, named in their errors.
    """

    name = "process"

    def __init__(
        self,
        *,
        default_timeout: float = 30.0,
        default_memory_mb: int = 512,
        python: str = sys.executable,
        base_env: dict[str, str] | None = None,
        user: str | None = "auto",
        strict_network: bool = True,
        host_paths: HostPaths | None = None,
        max_output_mb: int | None = None,
        default_pids: int | None = None,
        cgroups: str = "auto",
        state_dir: str | os.PathLike | None = None,
        data_dir: str | os.PathLike | None = None,
        cache_dir: str | os.PathLike | None = None,
        installer: str = "auto",
        index_url: str = "",
        env_build_timeout: float = 600.0,
        env_ttl: float = 86400.0,
        envs_max_mb: int = 20480,
        envs_min_free_mb: int = 1024,
        installer_env: dict[str, str] | None = None,
        node: str = "",
    ) -> None:
        if cgroups not in ("auto", "required", "off"):
            raise ValueError(f"cgroups must be 'auto', 'required' or 'off', not {cgroups!r}")
        if max_output_mb is not None and not 1 <= max_output_mb <= MAX_OUTPUT // MIB:
            raise ValueError(f"max_output_mb must be between 1 and {MAX_OUTPUT // MIB}")
        self.default_timeout = default_timeout
        self.default_memory_mb = default_memory_mb
        self.default_pids = default_pids
        self.max_output = max_output_mb * MIB if max_output_mb else MAX_OUTPUT
        self.cgroups_mode = cgroups
        self.state_dir = state_dir
        self.sandbox = Sandbox(resolve_user(user, os.geteuid()), strict_network=strict_network,
                               per_function=user == PER_FUNCTION)
        self.planner = Planner(self.sandbox, host_paths if host_paths is not None else HostPaths(),
                               dict(DEFAULT_ENV if base_env is None else base_env), python)
        self._host_: Host | None = None
        self._cgroups_why = ""
        self._workers: set[Worker] = set()
        self._oneshots: set[OneShot] = set()
        if installer not in ("auto", "uv", "pip"):
            raise ValueError(f"installer must be 'auto', 'uv' or 'pip', not {installer!r}")
        self._env_options = dict(installer=installer, index_url=index_url,
                                 timeout=env_build_timeout, ttl=env_ttl,
                                 max_bytes=envs_max_mb << 20,
                                 min_free_bytes=envs_min_free_mb << 20,
                                 env=installer_env, node=node)
        #: the node data directory a default cache belongs to (written into it as OWNER_FILE)
        self._owner = ""
        if cache_dir is None and data_dir is not None:
            cache_dir = default_cache_dir(data_dir, self.sandbox.user is not None)
            self._owner = os.path.realpath(data_dir)
            if self.sandbox.user is not None:  # /var/cache/spear: every node's on this host
                self.planner.host_paths.forbid(os.path.dirname(cache_dir), CACHE_WHAT)
        self._cache_temp = cache_dir is None
        if cache_dir is None:  # made now, so no grant made before it can hold it
            cache_dir = tempfile.mkdtemp(prefix="spear-cache-")
            os.chmod(cache_dir, 0o755)
        self.cache_dir: str | None = os.path.abspath(cache_dir)
        # never granted: every tenant's code and environments, the instances' scratch
        # directories and the copy of pyworker.py (all under it, see _scratch)
        self.planner.host_paths.forbid(self.cache_dir, CACHE_WHAT)
        self.planner.scratch = self._scratch
        if self.sandbox.per_function:  # who owns each uid: the default caches' parent
            # (/var/cache/spear) is every node's on this host, so one record for them all
            self.sandbox.claims = os.path.join(
                os.path.dirname(self.cache_dir) if self._owner else self.cache_dir, "uids")
        self._code: CodeCache | None = None
        self._envs: PyEnvs | None = None
        u = self.sandbox.user
        if self.sandbox.per_function:
            log.info("process functions run each as a user of its own (uid %d + a number "
                     "drawn from its name)", FUNCTION_UID_BASE)
        elif u is not None:
            log.info("process functions run as %s (uid %d, gid %d)", u.name, u.uid, u.gid)

    @property
    def sandbox_user(self) -> User | None:
        """The identity functions are switched to; None: they run as the Spearlet does."""
        return self.sandbox.user

    def available(self) -> tuple[bool, str]:
        if os.name != "posix":
            return False, "the process runtime needs a POSIX system"
        if self.cgroups_mode == "required":
            host = self._host()
            if host.cgroups is None:
                return False, f"cgroups are required ([runtimes.process] cgroups) but: {self._cgroups_why}"
        return True, ""

    def _host(self) -> Host:
        """The gate, the cgroups and the record, found once (the first start)."""
        if self._host_ is None:
            self._host_, self._cgroups_why = open_host(self.cgroups_mode, self.state_dir,
                                                       self.sandbox.user)
            if self.sandbox.per_function:  # one uid per function: sweeps look at every process
                self._host_.sweep_uid = None
        return self._host_

    @property
    def cgroups(self) -> cg.Cgroups | None:
        """The node's execution cgroups (None: rlimits only; see the warning at start)."""
        return self._host().cgroups

    def reap_leftovers(self) -> int:
        """End what an earlier run of this node left (recorded in ``state_dir``); returns how many."""
        if self.state_dir is None:
            return 0
        from .leftovers import reap_leftovers

        return reap_leftovers(self.state_dir)

    def _bounds(self, limits: Limits, own: Limits, memory_mb: int, oneshot: bool) -> Bounds:
        pids = limits.pids or own.pids
        if pids is None and self.default_pids:
            groups = self._host().cgroups
            if groups is not None and groups.has("pids"):
                pids = self.default_pids
        return Bounds(memory_mb=memory_mb,
                      cpu_seconds=(limits.cpu_seconds or own.cpu_seconds) if oneshot else None,
                      pids=pids,
                      cpus=limits.cpus if limits.cpus is not None else own.cpus)

    def _max_output(self, limits: Limits, own: Limits) -> int:
        mb = limits.max_output_mb or own.max_output_mb
        return min(self.max_output, mb * MIB) if mb else self.max_output

    async def network_isolation(self) -> tuple[bool, str]:
        """``(True, "")`` if functions can be denied the network here, else ``(False, why)``."""
        return await self.sandbox.network_isolation()

    async def prepare(self, spec: FunctionSpec) -> Prepared:
        if spec.runtime != self.name:
            raise errors.InvalidArgument(f"{spec.name}: runtime is {spec.runtime!r}, not 'process'")
        handler = bool(spec.handler.strip())
        bundle = pyenv = ""
        try:
            if handler and spec.artifact is not None:
                bundle = await self._caches()[0].acquire(spec.name, spec.artifact,
                                                         spec.artifact_sha256)
            if handler and (spec.requirements or spec.python):
                pyenv = await self._pyenv(spec)
            code_dir = self._code.path(bundle) if bundle else ""
            interpreter = self._envs.python_of(pyenv) if pyenv else ""
            plan, digest = await self.planner.plan(spec, code_dir, interpreter)
        except BaseException:
            if bundle:
                self._code.release(bundle)
            if pyenv:
                self._envs.release(pyenv)
            raise
        plan.bundle, plan.pyenv = bundle, pyenv
        return Prepared(spec=spec, handle=plan, digest=digest)

    async def _pyenv(self, spec: FunctionSpec) -> str:
        """The key of the environment of ``spec`` (Python version and requirements), built if need be."""
        version = None
        if spec.python:
            m = _VERSION.match(spec.python)
            if m is None:
                raise errors.InvalidArgument(
                    f"{spec.name}: python must be a version like '3.11', not {spec.python!r}")
            version = (int(m.group(1)), int(m.group(2)))
        version = version or python_version(self.planner.python) or sys.version_info[:2]
        interpreter = self.planner.python_for_handlers(spec.name, version)
        envs = self._caches()[1]
        return await envs.acquire(spec.name, interpreter, version, list(spec.requirements))

    def _caches(self) -> tuple[CodeCache, PyEnvs]:
        """The code cache and the environments, under a cache directory made (0755) and
        checked on first use: the sandbox user must be able to reach into it."""
        if self._code is None:
            root = self.cache_dir
            if root is None:
                raise errors.Unavailable("the process runtime is closed")
            make_dirs(os.path.join(root, "code"))
            if self.sandbox.per_function:  # bundles are read by digest, never listed:
                os.chmod(os.path.join(root, "code"), 0o711)  # no function finds another's
            make_dirs(os.path.join(root, "envs"))
            if self._owner:
                write_owner(root, self._owner)
            user = self.sandbox.user
            why = denied(os.path.join(root, "envs"), user, read=True, execute=True)
            if why is not None:
                raise errors.Unavailable(
                    f"the code cache {root} ([runtimes.process] cache_dir) is not reachable by "
                    f"{user.name}, the user functions run as: {why}")
            self._code = CodeCache(os.path.join(root, "code"))
            self._envs = PyEnvs(os.path.join(root, "envs"), **self._env_options)
        return self._code, self._envs

    def _scratch(self) -> str:
        """``<cache_dir>/run`` (0711): where the instances' working directories and the
        copy of pyworker.py are made, out of every grant's reach (the cache is never
        granted) and not listable by the sandbox user."""
        if self.cache_dir is None:
            raise errors.Unavailable("the process runtime is closed")
        run = os.path.join(self.cache_dir, "run")
        if not os.path.isdir(run):
            make_dirs(run)
            os.chmod(run, 0o711)
        return run

    async def release(self, prepared: Prepared) -> None:
        plan = prepared.handle
        if not isinstance(plan, Plan):
            return
        bundle, pyenv, plan.bundle, plan.pyenv = plan.bundle, plan.pyenv, "", ""
        if bundle and self._code is not None:
            self._code.release(bundle)
        if pyenv and self._envs is not None:
            self._envs.release(pyenv)

    def collect(self) -> None:
        """Remove unpacked bundles no function uses, and environments unused for ``env_ttl``."""
        root = self.cache_dir
        if root is None or not any(os.path.isdir(os.path.join(root, d)) for d in ("code", "envs")):
            return  # nothing deployed here ever needed it: make nothing
        try:
            code, envs = self._caches()
        except errors.SpearError:
            return  # said at the deploy that needs it
        code.collect()
        envs.collect()

    # -- instances
    async def create_instance(self, prepared: Prepared) -> Instance:
        plan: Plan = prepared.handle
        spec = prepared.spec
        tmpdir = None
        cwd = plan.workdir
        if not cwd:
            tmpdir = cwd = tempfile.mkdtemp(prefix=f"spear-{spec.name}-", dir=self._scratch())
            user = self.sandbox.user_for(spec.name)
            if user is not None:  # mode 0700: the function's own, nobody else's
                try:
                    os.chown(tmpdir, user.uid, user.gid)
                except OSError:
                    rmtree(tmpdir)
                    raise
        try:
            host = self._host()
        except BaseException:
            rmtree(tmpdir)
            raise
        if not plan.pooled:
            handle = OneShot(plan, cwd, tmpdir, host, spec.name)
            self._oneshots.add(handle)
            return Instance(function=spec.name, handle=handle)
        worker = Worker(plan, cwd, tmpdir, host, spec.name, self.max_output)
        self._workers.add(worker)
        memory_mb = spec.limits.memory_mb or self.default_memory_mb
        try:
            await worker.start(self._bounds(Limits(), spec.limits, memory_mb, False),
                               self.default_timeout)
        except BaseException:
            self._workers.discard(worker)
            rmtree(tmpdir)
            raise
        return Instance(function=spec.name, handle=worker)

    async def invoke(
        self,
        instance: Instance,
        data: bytes,
        args: list,
        limits: Limits,
        on_log: LogSink | None = None,
        *,
        traceparent: str = "",
        tracestate: str = "",
    ) -> Outcome:
        handle = instance.handle
        kind = type(handle)
        if kind is not Worker and kind is not OneShot:
            raise errors.InvalidArgument("not an instance of the process runtime")
        own = handle.plan.limits
        timeout = limits.timeout or own.timeout or self.default_timeout
        memory_mb = limits.memory_mb or own.memory_mb or self.default_memory_mb
        if limits.cpu_seconds is None and own.cpu_seconds is not None:
            limits = Limits(timeout=timeout, memory_mb=memory_mb, cpu_seconds=own.cpu_seconds)
        bounds = self._bounds(limits, own, memory_mb, kind is OneShot)
        max_output = self._max_output(limits, own)
        instance.invocations += 1
        if kind is Worker:
            try:
                outcome = await handle.call(data, args, limits, on_log, timeout, bounds, max_output,
                                            trace_env(traceparent, tracestate))
            except (errors.FunctionError, errors.InvalidArgument):
                if not handle.alive:
                    instance.reusable = False
                raise
            except BaseException:  # timeout, memory, crash, cancel: never reuse
                instance.reusable = False
                raise
            if not handle.alive:  # replied, then died or was killed by a late timer
                instance.reusable = False
            return outcome
        return await run_oneshot(handle, data, args, limits, on_log, timeout, bounds, max_output,
                                 trace_env(traceparent, tracestate))

    async def destroy(self, instance: Instance) -> None:
        instance.reusable = False
        handle = instance.handle
        if type(handle) is Worker:
            self._workers.discard(handle)
            await handle.stop()
            rmtree(handle.tmpdir)
        elif type(handle) is OneShot:
            self._oneshots.discard(handle)
            for child in list(handle.running):
                child.kill()
            for child in list(handle.running):
                await child.wait()
            rmtree(handle.tmpdir)

    async def close(self) -> None:
        workers, self._workers = list(self._workers), set()
        oneshots, self._oneshots = list(self._oneshots), set()
        for h in oneshots:
            for child in list(h.running):
                child.kill()
        await asyncio.gather(*(w.stop(grace=0) for w in workers), return_exceptions=True)
        for h in oneshots:
            for child in list(h.running):
                await child.wait()
        for tmpdir in [w.tmpdir for w in workers] + [h.tmpdir for h in oneshots]:
            rmtree(tmpdir)
        self.planner.close()
        if self._cache_temp:
            rmtree(self.cache_dir)
            self.cache_dir, self._code, self._envs, self._cache_temp = None, None, None, False
        host, self._host_ = self._host_, None
        if host is not None:
            await close_host(host)
