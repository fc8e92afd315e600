"""The pooled Python handler worker shipped with Spear.

Run as ``python -m spear.runtimes.process.pyworker module:function`` (or by file
path, which is what the process runtime does so that starting a worker never
imports the rest of Spear). It loads ``function`` from ``module`` once, then
serves invocations over the Spear worker protocol (docs/worker-protocol.md):

* requests arrive on fd 3, replies go to fd 4 (the runtime sets both up;
  stdin is /dev/null, stdout and stderr are the log stream);
* every frame is a 4-byte big-endian length followed by that many bytes;
* first the worker sends a *ready* reply (status 0), or status 1 with the
  import error if the handler cannot be loaded, and exits;
* each request body is ``u32 header length | JSON header | input bytes``;
  the header may be empty or ``{"args": [...]}``;
* each reply body is ``u8 status | payload``: 0 = output, 1 = the handler
  raised (``"Type: message"``, then a NUL byte and the end of its traceback),
  2 = resources exhausted (``MemoryError``);
* given a shared region (its descriptor in ``SPEAR_WORKER_REGION``), the
  worker says ``region`` in its ready reply; then a header ``{"region": n}``
  means the input is the region's first ``n`` bytes, and an output of 64 KiB
  or more is written there too, the reply being status 3 with its length as
  a u64.

The handler is called as ``function(data)`` or ``function(data, *args)`` and
may return ``bytes`` (sent as is), ``str`` (UTF-8), ``None`` (empty output)
or anything JSON-serialisable (sent as compact JSON). An exception becomes an
error reply and the worker keeps serving. ``print`` output and tracebacks go
to stderr, which the runtime streams as the invocation's logs: the protocol
pipes are moved off fds 3 and 4 first to close-on-exec descriptors, so
neither user code printing nor a subprocess it starts can reach them.

Standard library only, on purpose: this file must start fast.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import struct
import sys
import traceback

PROTOCOL_VERSION = 2
#: where the runtime hands a worker its protocol pipes
REQUEST_FD, REPLY_FD = 3, 4

OK = 0
ERROR = 1
EXHAUSTED = 2
IN_REGION = 3  # the output is in the region; the payload is its length

#: names the descriptor of the region the runtime shares with this worker
REGION_VAR = "SPEAR_WORKER_REGION"
#: outputs at least this big go through the region
REGION_MIN = 64 * 1024

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_REPLY = struct.Struct(">IB")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _send(fd: int, status: int, payload: bytes = b"") -> None:
    head = _REPLY.pack(len(payload) + 1, status)
    if len(payload) < 65536:
        _write_all(fd, head + payload)
    else:  # avoid copying big outputs just to prepend five bytes
        _write_all(fd, head)
        _write_all(fd, payload)


def _encode(result) -> bytes:
    kind = type(result)
    if kind is bytes:
        return result
    if kind is str:
        return result.encode("utf-8")
    if result is None:
        return b""
    if isinstance(result, (bytearray, memoryview)):
        return bytes(result)
    try:
        return json.dumps(result, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"handler returned {kind.__name__}, which is not bytes, str or JSON-serialisable"
        ) from exc


#: how much of a traceback an error reply carries (its end: the raising line)
TRACEBACK_TAIL = 8192


class CallEnv:
    """The variables a request sets for its call alone (``TRACEPARENT``, ...).

    Set in ``os.environ`` and in the process environment, so what the handler
    starts sees them too. Not through ``os.environ[key] = value``: that calls
    ``setenv()``, and glibc never frees a value it replaced, so a worker
    serving calls that each carry a new trace id would grow by about 100
    bytes per call for as long as it lives. Instead each variable lives in one
    buffer of this object, handed to ``putenv()`` (which keeps the pointer, no
    copy) and rewritten in place for the next call; a longer value gets a
    bigger buffer (capacity doubling, so a few at most). No buffer is ever
    freed: another thread may be reading the environment. Every call checks
    that the environment still holds the buffer (the handler may have set or
    removed the variable itself) and puts it back if not. Where ``ctypes`` or
    ``putenv`` is missing, ``os.environ`` is used as is.
    """

    def __init__(self) -> None:
        self.current: dict[str, str] = {}  # what the last call set
        self._bufs: dict[str, object] = {}  # key -> its "KEY=value" buffer
        self._outgrown: list[object] = []  # replaced by bigger ones; kept, never freed
        self._libc = None
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.putenv.argtypes = [ctypes.c_void_p]
            libc.unsetenv.argtypes = [ctypes.c_char_p]
            libc.getenv.argtypes = [ctypes.c_char_p]
            libc.getenv.restype = ctypes.c_void_p
            data = os.environ._data  # noqa: SLF001 - the mapping os.environ reads from
            self._ctypes, self._libc, self._data = ctypes, libc, data
        except (ImportError, OSError, AttributeError):
            pass

    def apply(self, env: dict) -> None:
        """Make ``env`` this call's variables: set them, unset the last call's others."""
        try:
            for key in self.current.keys() - env.keys():
                self._unset(key)
            for key, value in env.items():
                self._set(key, value)  # every time: the handler may have changed it since
        finally:
            self.current = env

    def _set(self, key: str, value: str) -> None:
        if self._libc is None or not key or "=" in key or "\0" in key or "\0" in value:
            os.environ[key] = value
            return
        c = self._ctypes
        k, v = os.environ.encodekey(key), os.environ.encodevalue(value)
        buf = self._bufs.get(key)
        if buf is None or len(buf) < len(k) + len(v) + 2:
            if buf is not None:
                self._outgrown.append(buf)
            buf = self._bufs[key] = c.create_string_buffer(k + b"=" + v, len(k) + 2 * len(v) + 2)
        else:  # the value after "KEY=", NUL-terminated
            c.memmove(c.addressof(buf) + len(k) + 1, v + b"\0", len(v) + 1)
        if self._libc.getenv(k) != c.addressof(buf) + len(k) + 1:  # not (or no longer) ours
            if self._libc.putenv(c.addressof(buf)) != 0:
                os.environ[key] = value
                return
        self._data[k] = v

    def _unset(self, key: str) -> None:
        if self._libc is None or key not in self._bufs:
            os.environ.pop(key, None)
            return
        k = os.environ.encodekey(key)
        self._libc.unsetenv(k)  # its buffer stays ours, for the next call that sets it
        self._data.pop(k, None)


def _describe(exc: BaseException) -> bytes:
    text = str(exc).replace("\0", "\\0")  # NUL ends the message (see _failed)
    name = type(exc).__name__
    return (f"{name}: {text}" if text else name).encode("utf-8", "replace")


def _failed(exc: BaseException) -> bytes:
    """An error reply's payload: ``Type: message``, NUL, the traceback in 8 KiB."""
    try:
        return _describe(exc) + b"\0" + _traceback(exc)
    except Exception:  # pragma: no cover - a broken __str__ must not kill us
        return _describe(exc)


def _traceback(exc: BaseException) -> bytes:
    """The traceback, at most 8 KiB: its end, so the raising line stays, with
    the final ``Type: message`` cut to 1 KiB so a huge message cannot push it out."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    data = text.encode("utf-8", "replace")
    if len(data) <= TRACEBACK_TAIL:
        return data
    only = "".join(traceback.format_exception_only(type(exc), exc))
    frames = text[: len(text) - len(only)] if text.endswith(only) else text
    last = only.encode("utf-8", "replace")[:1024]
    return b"...\n" + frames.encode("utf-8", "replace")[-(TRACEBACK_TAIL - 4 - len(last)):] + last


def load(target: str):
    """Import ``module:function`` (the function part may be dotted)."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"handler must look like module:function, got {target!r}")
    obj = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{target} is not callable")
    return obj


def _isolate_protocol_fds() -> tuple[int, int]:
    """Move the protocol pipes off fds 3/4 (closed); fd 0 becomes /dev/null, fd 1 stderr."""
    proto_in = os.dup(REQUEST_FD)  # dup'd fds are close-on-exec: children never see them
    proto_out = os.dup(REPLY_FD)
    os.close(REQUEST_FD)
    os.close(REPLY_FD)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    try:
        sys.stdout.reconfigure(line_buffering=True)
    except (AttributeError, ValueError):  # pragma: no cover - replaced stdout
        pass
    return proto_in, proto_out


def _open_region() -> tuple[int, int]:
    """The region the runtime passed (a close-on-exec copy) and its size; (-1, 0) if none."""
    value = os.environ.pop(REGION_VAR, "")  # the handler has no use for it
    if not value.isdigit():
        return -1, 0
    fd = int(value)
    try:
        size = os.fstat(fd).st_size
        mine = os.dup(fd)  # close-on-exec: a subprocess of the handler never gets it
        os.close(fd)
    except OSError:
        return -1, 0
    return mine, size


def _from_region(region: int, size: int, n) -> bytes:
    """The input the runtime left in the region."""
    if not isinstance(n, int) or not 0 <= n <= size:
        raise ValueError(f"bad region length {n!r}")
    data = os.pread(region, n, 0)
    if len(data) != n:
        raise ValueError(f"region input of {len(data)} bytes, {n} expected")
    return data


def _to_region(proto_out: int, region: int, out: bytes) -> None:
    view = memoryview(out)
    offset = 0
    while offset < len(out):
        offset += os.pwrite(region, view[offset:], offset)
    _write_all(proto_out, _REPLY.pack(1 + _U64.size, IN_REGION) + _U64.pack(len(out)))


def serve(fn, proto_in: int, proto_out: int, region: int = -1, region_size: int = 0) -> int:
    """Answer requests until EOF on ``proto_in``; returns the exit status."""
    reader = io.open(proto_in, "rb", buffering=1 << 16, closefd=False)
    read = reader.read
    unpack = _U32.unpack
    unpack_from = _U32.unpack_from
    stdout, stderr = sys.stdout, sys.stderr
    call_env = CallEnv()
    while True:
        head = read(4)
        if len(head) < 4:
            return 0
        (size,) = unpack(head)
        body = read(size)
        if len(body) < size or size < 4:
            return 0 if len(body) < size else 3
        (hlen,) = unpack_from(body)
        try:
            if hlen:
                header = json.loads(body[4 : 4 + hlen])
                args = header.get("args") or ()
                call_env.apply(header.get("env") or {})
                if "region" in header and region >= 0:
                    data = _from_region(region, region_size, header["region"])
                else:
                    data = body[4 + hlen :]
                out = _encode(fn(data, *args))
            else:
                if call_env.current:  # no variables for this call: not the last call's either
                    call_env.apply({})
                out = _encode(fn(body[4:]))
            status = OK
        except MemoryError as exc:
            status, out = EXHAUSTED, _describe(exc)
        except BaseException as exc:  # noqa: BLE001 - user code may raise anything
            if isinstance(exc, KeyboardInterrupt):
                raise
            status, out = ERROR, _failed(exc)
            try:
                traceback.print_exc()
            except Exception:  # pragma: no cover - printing must not kill us
                pass
        try:
            stdout.flush()
            stderr.flush()
        except Exception:  # pragma: no cover
            pass
        if status == OK and region >= 0 and REGION_MIN <= len(out) <= region_size:
            _to_region(proto_out, region, out)
        else:
            _send(proto_out, status, out)


#: prctl(2) option: whether the process may be dumped, traced or read through /proc by others
PR_SET_DUMPABLE = 4
#: set to "1" by the runtime when functions run as another user than the Spearlet
PRIVATE_VAR = "SPEAR_WORKER_PRIVATE"


def _private() -> bool:
    """Make this worker non-dumpable: its ``/proc/<pid>`` entries then belong to
    root, so another function running as the same sandbox user can neither read
    its environment (the function's variables, secrets included), memory map,
    memory or descriptors (its payload region), nor ptrace it. Its own
    ``/proc/self`` stays its own. Returns whether the kernel took it."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0
    except (ImportError, OSError, AttributeError):
        return False


def main(argv: list[str] | None = None) -> int:
    """Load the handler named in ``argv`` and serve it until the runtime closes fd 3."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m spear.runtimes.process.pyworker module:function", file=sys.stderr)
        return 2
    # Run by file path, sys.path[0] is this directory: use the working
    # directory instead so the function's own modules are found first.
    here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or ".") == here:
        sys.path[0] = os.getcwd()
    if os.environ.pop(PRIVATE_VAR, "") == "1":  # set when functions run as another user
        _private()  # before the handler's code runs and before the region is opened
    proto_in, proto_out = _isolate_protocol_fds()
    try:
        fn = load(argv[0])
    except BaseException as exc:  # noqa: BLE001 - report any import failure
        traceback.print_exc()
        sys.stderr.flush()
        _send(proto_out, ERROR, _describe(exc))
        return 1
    region, region_size = _open_region()
    ready = b"spear-pyworker %d" % PROTOCOL_VERSION
    _send(proto_out, OK, ready + b" region" if region >= 0 else ready)
    return serve(fn, proto_in, proto_out, region, region_size)


if __name__ == "__main__":
    sys.exit(main())
