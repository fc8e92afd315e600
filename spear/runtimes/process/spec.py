"""Function specs of the process runtime, parsed into plans.

A :class:`Plan` is what ``prepare`` resolved once per deploy: the command
(with the sandbox wrapper in front, see :mod:`.sandbox`), the environment,
the working directory and the mode. Three kinds of function:

* **one-shot** (``command``, ``mode="oneshot"``): every invocation starts
  ``command + args`` (see :mod:`.oneshot`);
* **pooled** (``command``, ``mode="pooled"``): one long-lived worker per
  instance answers many invocations over the framed pipe protocol of
  ``docs/worker-protocol.md`` (see :mod:`.workers`);
* **Python handler** (``handler="module:function"``): always pooled, served by
  :mod:`.pyworker`. The module is looked up in the working directory first,
  then ``PYTHONPATH`` from ``spec.env``. If ``command`` is also given it is
  the interpreter to use (e.g. ``["/venv/bin/python"]``). A handler shipped
  as a code bundle runs in the node's unpacked copy of it, and one with
  ``requirements`` or ``python`` with its environment's interpreter (both
  made by the runtime, see :mod:`.codecache` and :mod:`.pyenvs`).

The environment is built from the runtime's ``base_env`` plus ``spec.env``
only, never the Spearlet's own; ``spec.workdir`` must be under a host root
the node allows (see :mod:`..hostpaths`). Everything the sandbox user could
not reach (the workdir, the command, the interpreter) fails the deploy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from typing import Callable

from ... import errors
from ...protocol import FunctionSpec, Limits
from ..hostpaths import HostPaths
from .sandbox import SYSTEM_PATH, Sandbox, denied, is_script, python_denied, python_version

log = logging.getLogger(__name__)

#: The Python handler worker, run by path so that it never imports Spear.
PYWORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pyworker.py")
#: tells Spear's Python worker to make itself non-dumpable (it drops the variable)
PRIVATE_VAR = "SPEAR_WORKER_PRIVATE"
#: Version of the framed worker protocol, given to workers in SPEAR_WORKER_PROTOCOL.
#: 2: requests on fd 3, replies on fd 4; stdin is /dev/null, stdout a log stream.
WORKER_PROTOCOL = 2
#: Environment a function starts from when the Spearlet passes none.
DEFAULT_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp"}
_HANDLER_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


@dataclass
class Plan:
    """What ``prepare`` resolved: argv, environment, working directory, mode.

    ``argv`` already starts with the sandbox wrapper (``unshare ... --``) when
    there is one; ``popen_kw`` holds ``user``/``group`` only when the switch
    must be done by ``subprocess`` itself (no ``unshare`` on this system).
    """

    argv: list[str]
    executable: str | None
    env: dict[str, str]
    workdir: str
    pooled: bool
    limits: Limits  # the spec's own, used where the call's limits say None
    popen_kw: dict = field(default_factory=dict)
    #: SHA-256 of the code bundle and key of the Python environment it uses ("": none)
    bundle: str = ""
    pyenv: str = ""


def rmtree(path: str | None) -> None:
    """Remove a directory we made (an instance's temporary one), if any."""
    if path:
        shutil.rmtree(path, ignore_errors=True)


class Planner:
    """Turns the FunctionSpecs of one runtime into :class:`Plan` s.

    ``python`` is the interpreter of Python handlers (or a system one of the
    same version that the sandbox user can run); ``pyworker.py`` is used in
    place or, if the sandbox user cannot read it, from a copy removed by
    :meth:`close`.
    """

    def __init__(self, sandbox: Sandbox, host_paths: HostPaths, base_env: dict[str, str],
                 python: str) -> None:
        self.sandbox = sandbox
        self.host_paths = host_paths
        self.base_env = base_env
        self.python = python
        self._handler_python: str | None = None
        self._pyworker: str | None = None
        self._pyworker_copy: str | None = None  # a readable copy we made, removed at close
        #: where scratch directories go (the runtime's, out of every grant's reach);
        #: None: the system's temporary directory
        self.scratch: Callable[[], str] | None = None

    async def plan(self, spec: FunctionSpec, code_dir: str = "",
                   interpreter: str = "") -> tuple[Plan, str]:
        """The plan of ``spec`` and its digest; InvalidArgument for what cannot run here.

        ``code_dir``: the node's unpacked bundle of a handler (its workdir);
        ``interpreter``: the Python of the handler's environment.
        """
        argv, pooled = self._command(spec, interpreter)
        env = self._environment(spec, pooled)
        workdir = self._code_dir(spec, code_dir) if code_dir else self._workdir(spec)
        executable = self._executable(spec.name, argv[0], env, workdir)
        argv, executable, env, popen_kw = await self.sandbox.wrap(
            spec.name, argv, executable, env, spec.limits.network)
        plan = Plan(argv, executable, env, workdir, pooled, spec.limits, popen_kw)
        digest = hashlib.sha256(
            json.dumps([argv, sorted(env.items()), workdir, pooled, sorted(popen_kw.items())]).encode()
        ).hexdigest()
        return plan, digest

    def _command(self, spec: FunctionSpec, interpreter: str = "") -> tuple[list[str], bool]:
        """What to run (before the sandbox wrapper) and whether it is a pooled worker."""
        handler = spec.handler.strip()
        if handler:
            if not _HANDLER_RE.match(handler):
                raise errors.InvalidArgument(
                    f"{spec.name}: handler must look like module:function, got {handler!r}"
                )
            if interpreter and spec.command:
                raise errors.InvalidArgument(
                    f"{spec.name}: a handler with requirements or python gets its interpreter "
                    "from its environment; leave command empty")
            python = ([interpreter] if interpreter else
                      list(spec.command) or [self.python_for_handlers(spec.name)])
            argv = [*python, self.worker_script(spec.name), handler]
            pooled = True
        elif spec.command:
            argv = list(spec.command)
            pooled = spec.mode == "pooled"
        else:
            raise errors.InvalidArgument(f"{spec.name}: a process function needs a command or a handler")
        if not argv[0] or any("\0" in a for a in argv):
            raise errors.InvalidArgument(f"{spec.name}: bad command {argv!r}")
        return argv, pooled

    def _environment(self, spec: FunctionSpec, pooled: bool) -> dict[str, str]:
        """``base_env`` plus ``spec.env`` plus what Spear tells every function."""
        env = dict(self.base_env)
        if self.sandbox.per_function and self.scratch is not None:
            # a user of its own, without a passwd entry: its own home, and its name
            # where programs look first (getpass.getuser() reads LOGNAME, USER)
            env["HOME"] = self._home(spec.name)
            env["USER"] = env["LOGNAME"] = self.sandbox.user_for(spec.name).name
        for key, value in spec.env.items():
            if not key or "=" in key or "\0" in key or "\0" in value:
                raise errors.InvalidArgument(f"{spec.name}: bad environment variable {key!r}")
            env[key] = value
        env["SPEAR_FUNCTION"] = spec.name
        if pooled:
            env["SPEAR_WORKER_PROTOCOL"] = str(WORKER_PROTOCOL)
        if spec.handler.strip() and self.sandbox.user is not None:
            # functions run as another user than the Spearlet: Spear's Python worker makes
            # itself non-dumpable, out of the other functions' reach (the Spearlet, root,
            # still reads its memory figures); see pyworker._private
            env[PRIVATE_VAR] = "1"
        return env

    def _home(self, name: str) -> str:
        """``<scratch>/home-<uid>`` (0700), the HOME of function ``name``'s own user: a
        shared one (``/tmp``) would let a function plant code or settings that another
        one's Python (user site-packages), pip or git load."""
        user = self.sandbox.user_for(name)
        home = os.path.join(self.scratch(), f"home-{user.uid}")  # root's 0711: no one else's
        try:
            try:
                os.mkdir(home, 0o700)
            except FileExistsError:
                if not stat.S_ISDIR(os.lstat(home).st_mode):
                    raise NotADirectoryError(f"{home} is not a directory") from None
            os.chown(home, user.uid, user.gid)
            os.chmod(home, 0o700)
        except OSError as exc:
            raise errors.Unavailable(f"{name}: cannot make its home {home}: {exc}") from None
        return home

    def _code_dir(self, spec: FunctionSpec, code_dir: str) -> str:
        """The unpacked bundle as workdir: the node's own directory, not a host path."""
        if spec.workdir:
            raise errors.InvalidArgument(
                f"{spec.name}: a handler deployed with a code bundle runs in it; leave workdir empty")
        user = self.sandbox.user
        why = denied(code_dir, user, read=True, execute=True)
        if why is not None:
            raise errors.InvalidArgument(
                f"{spec.name}: the code cache {code_dir} is not accessible to {user.name}, the "
                f"user functions run as: {why} (see [runtimes.process] cache_dir)")
        return code_dir

    def _workdir(self, spec: FunctionSpec) -> str:
        """The granted, resolved workdir ("" for a fresh temporary one per instance)."""
        if not spec.workdir:
            return ""
        user = self.sandbox.user
        # a host path: allowed roots only (read access: the process runtime
        # cannot make a directory read-only; file modes and the user do)
        granted = self.host_paths.grant(spec.workdir, write=False,
                                        what=f"{spec.name}: workdir {spec.workdir!r}")
        workdir = granted.path
        granted.close()
        why = denied(workdir, user, read=True, execute=True)
        if why is not None:
            raise errors.InvalidArgument(
                f"{spec.name}: workdir {spec.workdir!r} is not accessible to {user.name}, "
                f"the user functions run as: {why}"
            )
        return workdir

    def _executable(self, name: str, command: str, env: dict[str, str], workdir: str) -> str:
        """The resolved executable, which the sandbox user must be able to run."""
        user = self.sandbox.user
        executable = self._resolve(name, command, env, workdir)
        why = denied(executable, user, execute=True)
        if why is None and user is not None and is_script(executable):
            why = denied(executable, user, read=True)
        if why is not None:
            raise errors.InvalidArgument(
                f"{name}: command {command!r} cannot be run by {user.name}, "
                f"the user functions run as: {why}"
            )
        return executable

    def python_for_handlers(self, name: str, version: tuple[int, int] | None = None) -> str:
        """An interpreter of Python ``version`` the sandbox user can run.

        ``version`` None: ``self.python``, or a system interpreter of its
        version (or, failing that, any ``python3``, with a warning). A
        version asked for is found or refused: InvalidArgument naming it and
        the user.
        """
        if version is None and self._handler_python is not None:
            return self._handler_python
        user = self.sandbox.user
        own = python_version(self.python)
        why = python_denied(self.python, user)
        if why is None and (version is None or own == version):
            if version is None:
                self._handler_python = self.python
            return self.python
        want = version or own
        names = [f"python{want[0]}.{want[1]}"] if want else []
        if version is None or version[0] == 3:
            names.append("python3")
        others: list[str] = []
        for exe in names:
            found = shutil.which(exe, path=SYSTEM_PATH)
            if found is None or python_denied(found, user) is not None:
                continue
            if want is None or python_version(found) == want:
                others.insert(0, found)
                break
            if version is None:
                others.append(found)
        fmt = lambda v: ".".join(map(str, v)) if v else "?"  # noqa: E731
        who = user.name if user is not None else "the Spearlet's user"
        if version is not None:
            if not others:
                raise errors.InvalidArgument(
                    f"{name}: no Python {fmt(version)} interpreter on this node that {who}, "
                    f"the user functions run as, can run (looked for {', '.join(names)} on "
                    f"{SYSTEM_PATH})")
            return others[0]
        if not others:
            raise errors.InvalidArgument(
                f"{name}: the Python interpreter {self.python} cannot be run by {who}, "
                f"the user functions run as ({why}), and no system python3 can; install "
                "Python where that user can read it or name an interpreter in the command"
            )
        alt = others[0]
        log.warning(
            "Python handlers run with %s (Python %s): the Spearlet's interpreter %s (Python %s) "
            "cannot be run by %s: %s", alt, fmt(python_version(alt)), self.python, fmt(own),
            who, why,
        )
        self._handler_python = alt
        return alt

    def worker_script(self, name: str) -> str:
        """Path of pyworker.py that the sandbox user can read (a copy if need be)."""
        if self._pyworker is not None:
            return self._pyworker
        user = self.sandbox.user
        if denied(PYWORKER, user, read=True) is None:
            self._pyworker = PYWORKER
            return PYWORKER
        copy_dir = tempfile.mkdtemp(prefix="spear-pyworker-",
                                    dir=self.scratch() if self.scratch is not None else None)
        try:
            os.chmod(copy_dir, 0o755)
            target = os.path.join(copy_dir, "pyworker.py")
            shutil.copyfile(PYWORKER, target)
            os.chmod(target, 0o644)
            why = denied(target, user, read=True)
        except OSError as exc:
            why = str(exc)
        if why is not None:
            rmtree(copy_dir)
            raise errors.InvalidArgument(
                f"{name}: no place where {user.name} can read pyworker.py ({why})"
            )
        log.info("%s cannot read %s: Python handlers use a copy in %s", user.name, PYWORKER, copy_dir)
        self._pyworker_copy = copy_dir
        self._pyworker = target
        return target

    @staticmethod
    def _resolve(name: str, exe: str, env: dict[str, str], workdir: str) -> str:
        """Find the executable now, so a typo fails the deploy, not every call."""
        if "/" not in exe:
            found = shutil.which(exe, path=env.get("PATH", os.defpath))
            if found is None:
                raise errors.InvalidArgument(f"{name}: command {exe!r} not found on the function's PATH")
            return found
        if not os.path.isabs(exe):
            if not workdir:
                raise errors.InvalidArgument(f"{name}: relative command {exe!r} needs a workdir")
            exe = os.path.join(workdir, exe)
        if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
            raise errors.InvalidArgument(f"{name}: {exe!r} is not an executable file")
        return exe


    def close(self) -> None:
        """Remove the copy of pyworker.py made for the sandbox user, if any."""
        copy, self._pyworker_copy = self._pyworker_copy, None
        if copy:
            self._pyworker = None
            rmtree(copy)
