"""The WASI context of a ``wasm`` call: argv, the granted environment and
directories, network, stdin in memory, and stdout/stderr opened from a path
(see :mod:`.stdio` for where those paths lead). Nothing else is inherited
from the host.
"""

from __future__ import annotations

import ctypes
from typing import Any

from ... import errors
from .engine import B

__all__ = ["WasiArgs", "wasi_config"]



def _char_array(items: list[bytes]) -> Any:
    """A ``char **`` over ``items`` (it keeps the array and the bytes alive)."""
    arr = (ctypes.c_char_p * max(1, len(items)))(*items)
    return ctypes.cast(arr, ctypes.POINTER(ctypes.POINTER(ctypes.c_char)))


_U8P = ctypes.POINTER(ctypes.c_ubyte)


class WasiArgs:
    """What a function's WASI context holds on every call (argv[0], the
    granted environment, preopens and network), ready as C arrays so that a
    call's ``wasi_config_t`` is built with a handful of C calls."""

    __slots__ = ("argv0", "argv", "pass_args", "env", "env_n", "env_names", "env_values",
                 "preopens", "network")

    def __init__(self, name: str, env: list[tuple[str, str]], preopens: list[tuple[str, str, bool]],
                 pass_args: bool, network: bool) -> None:
        self.argv0 = name.encode()
        self.argv = _char_array([self.argv0])
        self.pass_args = pass_args
        self.env = [(k.encode(), v.encode()) for k, v in env]
        self.env_n = len(env)
        self.env_names = _char_array([k for k, _ in self.env])
        self.env_values = _char_array([v for _, v in self.env])
        self.preopens = [(h.encode(), g.encode(), m) for h, g, m in preopens]
        self.network = network


def _with_trace(t: WasiArgs, trace: tuple[str, str]) -> tuple[int, Any, Any]:
    """The granted environment plus TRACEPARENT (and TRACESTATE) as C arrays."""
    names = [k for k, _ in t.env]
    values = [v for _, v in t.env]
    for name, value in zip((b"TRACEPARENT", b"TRACESTATE"), trace):
        if value:
            names.append(name)
            values.append(value.encode())
    return len(names), _char_array(names), _char_array(values)


def wasi_config(t: WasiArgs, args: list, stdin: bytes, out_path: bytes, err_path: bytes,
                trace: tuple[str, str] = ("", "")) -> Any:
    """A new ``wasi_config_t`` for one call: the grants in ``t`` (``args``
    follow argv[0] only if granted), ``stdin`` in memory (empty: EOF), stdout
    and stderr opened (and truncated) from the given paths, the call's W3C
    context ``trace`` (traceparent, tracestate) as TRACEPARENT/TRACESTATE. Nothing
    else is inherited from the host. The caller hands it to a store, which takes it."""
    cfg = B._wasi_config_new()
    try:
        if t.pass_args and args:
            argv = [t.argv0] + [str(a).encode() for a in args]
            ok = B._wasi_config_set_argv(cfg, len(argv), _char_array(argv))
        else:
            ok = B._wasi_config_set_argv(cfg, 1, t.argv)
        if not ok:
            raise errors.InvalidArgument("args must be valid UTF-8")
        env_n, env_names, env_values = (_with_trace(t, trace) if trace[0] else
                                        (t.env_n, t.env_names, t.env_values))
        if env_n and not B._wasi_config_set_env(cfg, env_n, env_names, env_values):
            raise errors.InvalidArgument("the environment must be valid UTF-8")
        for host, guest, mutable in t.preopens:
            if not B._wasi_config_preopen_dir(cfg, host, guest, mutable):
                raise errors.Unavailable(f"cannot preopen granted directory {host.decode()!r}")
        if t.network:
            B._wasi_config_inherit_network(cfg)
        if stdin:
            if stdin.__class__ is not bytes:
                stdin = bytes(stdin)
            vec = B.wasm_byte_vec_t()
            B._wasm_byte_vec_new(ctypes.byref(vec), len(stdin), ctypes.cast(stdin, _U8P))  # copies
            B._wasi_config_set_stdin_bytes(cfg, ctypes.byref(vec))  # takes the vector
        if not (B._wasi_config_set_stdout_file(cfg, out_path) and B._wasi_config_set_stderr_file(cfg, err_path)):
            raise errors.Internal("cannot open the stdout/stderr files of a WASI call")
    except BaseException:
        B._wasi_config_delete(cfg)
        raise
    return cfg
