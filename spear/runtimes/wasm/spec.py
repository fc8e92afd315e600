"""A ``wasm`` function spec, read and checked once at deploy.

:func:`artifact_of` takes the module bytes (binary or ``.wat`` text),
:func:`parse_grants` what the function may touch (``env``, ``args``,
``network``, ``dir:HOST[:GUEST[:ro|rw]]``; every host directory goes through
:meth:`HostPaths.grant <spear.runtimes.hostpaths.HostPaths.grant>`), and
:class:`Compiled` how the spec runs its module: as a WASI command (handler
``""`` or ``"_start"``) or by calling one numeric export.
"""

from __future__ import annotations

from ... import errors
from ...protocol import FunctionSpec
from ..hostpaths import HostDir, HostPaths
from .engine import wasmtime
from .modules import Module
from .wasi import WasiArgs

__all__ = ["Compiled", "NUMERIC", "Sandbox", "artifact_of", "parse_grants"]

NUMERIC = ("i32", "i64", "f32", "f64")


class Sandbox:
    """What a function may touch, parsed from ``FunctionSpec.grants``."""

    __slots__ = ("env", "preopens", "dirs", "args", "network")

    def __init__(self) -> None:
        self.env: list[tuple[str, str]] = []
        self.preopens: list[tuple[str, str, bool]] = []
        #: the granted directories' open handles, kept as long as the preopens use them
        self.dirs: list[HostDir] = []
        self.args = False
        self.network = False


def artifact_of(spec: FunctionSpec) -> bytes:
    """The module bytes of a spec (InvalidArgument if it has none)."""
    artifact = spec.artifact
    if not artifact:
        raise errors.InvalidArgument(f"function {spec.name!r}: a wasm function needs an artifact (.wasm or .wat bytes)")
    if not isinstance(artifact, (bytes, bytearray, memoryview)):
        raise errors.InvalidArgument("artifact must be bytes")
    return bytes(artifact)


def parse_grants(spec: FunctionSpec, host_paths: HostPaths) -> Sandbox:
    """The sandbox of a spec; InvalidArgument for an unknown or malformed
    grant, PermissionDenied (from ``host_paths``) for a directory not allowed."""
    sb = Sandbox()
    for grant in spec.grants:
        if grant == "env":
            sb.env = sorted(spec.env.items())
        elif grant == "args":
            sb.args = True
        elif grant == "network":
            sb.network = True
        elif grant.startswith("dir:"):
            parts = grant[4:].split(":")
            host = parts[0]
            guest = parts[1] if len(parts) > 1 and parts[1] else host
            mode = parts[2] if len(parts) > 2 else "ro"
            if len(parts) > 3 or mode not in ("ro", "rw"):
                raise errors.InvalidArgument(f"bad grant {grant!r}: use dir:HOST[:GUEST[:ro|rw]]")
            writable = mode == "rw" and not spec.limits.read_only
            granted = host_paths.grant(host, write=writable, what=f"{spec.name}: grant {grant!r}")
            sb.dirs.append(granted)
            sb.preopens.append((granted.handle_path, guest, writable))
        else:
            raise errors.InvalidArgument(
                f"unknown grant {grant!r} for the wasm runtime; known: env, args, network, dir:HOST[:GUEST[:ro|rw]]"
            )
    if spec.limits.network:
        sb.network = True
    return sb


class Compiled:
    """``Prepared.handle``: a module plus how this spec runs it."""

    __slots__ = (
        "mod", "name", "command", "export", "params", "results", "sandbox", "limits",
        "wasi", "inline", "slow",
    )

    def __init__(self, mod: Module, spec: FunctionSpec, sandbox: Sandbox) -> None:
        self.mod = mod
        self.name = spec.name
        self.sandbox = sandbox
        self.limits = spec.limits
        handler = spec.handler
        self.command = handler in ("", "_start")
        self.export = "_start" if self.command else handler
        ty = mod.exports.get(self.export)
        if ty is None or not isinstance(ty, wasmtime.FuncType):
            if self.command:
                raise errors.InvalidArgument(
                    "module has no `_start` function (not a WASI command); set "
                    "handler to the name of an exported function to call it"
                )
            funcs = sorted(n for n, t in mod.exports.items() if isinstance(t, wasmtime.FuncType))
            raise errors.InvalidArgument(
                f"module has no exported function {handler!r}; exported functions: {funcs}"
            )
        self.params = tuple(str(p) for p in ty.params)
        self.results = tuple(str(r) for r in ty.results)
        if self.command and (self.params or self.results):
            raise errors.InvalidArgument("`_start` must take no parameters and return nothing")
        bad = [t for t in self.params + self.results if t not in NUMERIC]
        if bad:
            raise errors.InvalidArgument(
                f"export {handler!r} uses non-numeric types {bad}; only i32, i64, f32, f64 are supported"
            )
        self.wasi = WasiArgs(spec.name, sandbox.env, sandbox.preopens, sandbox.args, sandbox.network)
        #: a command may run inline on the event loop only if no host call can
        #: block it: no preopened directories, no ``poll_oneoff`` (stdin is in
        #: memory, stdout/stderr are memfds)
        self.inline = self.command and not sandbox.preopens and not mod.may_block
        #: the last call of this command took longer than ``inline_budget``
        #: (unknown at first: the first call runs on the pool)
        self.slow = True
