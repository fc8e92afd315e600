"""Python handlers used by tests/runtimes/test_process.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time


def pid(data: bytes) -> str:
    return str(os.getpid())


def boom(data: bytes) -> bytes:
    raise ValueError("bad input: " + data.decode())


def env(data: bytes) -> dict:
    return dict(os.environ)


def cwd(data: bytes) -> str:
    return os.getcwd()


def talk(data: bytes) -> str:
    print("to stdout, which is the log stream")
    print("to stderr", file=sys.stderr)
    return "done"


def talk_child(data: bytes) -> str:
    """A program the handler starts writes a reply-shaped frame to its stdout."""
    subprocess.run(["sh", "-c", r"printf 'from a child\n\000\000\000\006\000FAKE!'"], check=True)
    return "done"


def args(data: bytes, *rest) -> list:
    return [data.decode(), *rest]


def bomb(data: bytes) -> bytes:
    hog = []
    while True:
        hog.append(bytearray(16 * 1024 * 1024))


def sleep(data: bytes) -> str:
    time.sleep(float(data or b"30"))
    return "slept"


def spin(data: bytes) -> str:
    end = time.time() + float(data or b"30")
    while time.time() < end:
        pass
    return "spun"


def crash(data: bytes) -> bytes:
    os._exit(7)


def tree(data: bytes) -> str:
    """Start a child that starts a sleeping grandchild; write all pids to the file named by data."""
    code = (
        "import subprocess, sys, time\n"
        "g = subprocess.Popen(['sleep', '60'])\n"
        "open(sys.argv[1], 'a').write(f'{g.pid}\\n')\n"
        "time.sleep(60)\n"
    )
    path = data.decode()
    child = subprocess.Popen([sys.executable, "-c", code, path])
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n{child.pid}\n")
    time.sleep(60)
    return "never"


def weird(data: bytes) -> object:
    return object()


_HELD: list[bytes] = []


def hold(data: bytes) -> int:
    """Keep ``data`` MiB (touched) until the worker ends; b"" keeps nothing."""
    if data:
        _HELD.append(b"x" * (int(data) << 20))
    return sum(map(len, _HELD))


def child_env(data: bytes) -> str:
    """What a process the handler starts sees of the call's trace context."""
    import subprocess

    return subprocess.run(["sh", "-c", 'printf "%s|%s" "$TRACEPARENT" "$TRACESTATE"'],
                          capture_output=True, check=True).stdout.decode()


def rss(data: bytes) -> int:
    """This worker's resident memory in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def meddle(data: bytes) -> dict:
    """Report the call's trace variables (os.environ, a child's), then change them as
    ``data`` says: ``set``, ``unset`` (os.unsetenv) or ``del-state``."""
    import subprocess

    seen = {"env": [os.environ.get("TRACEPARENT"), os.environ.get("TRACESTATE")],
            "child": subprocess.run(["sh", "-c", 'printf "%s|%s" "$TRACEPARENT" "$TRACESTATE"'],
                                    capture_output=True, check=True).stdout.decode()}
    if data == b"set":
        os.environ["TRACEPARENT"] = "set-by-the-handler"
    elif data == b"unset":
        os.unsetenv("TRACEPARENT")
    elif data == b"del-state":
        del os.environ["TRACESTATE"]
    return seen
