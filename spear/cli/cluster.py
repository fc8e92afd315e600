"""``spear up`` and ``spear demo``: an embedded cluster on loopback.

``up`` runs the SMS, N Spearlets and the gateway until Ctrl-C
(:func:`spear.cluster.run_up`). ``demo`` starts a cluster (SMS + 2 Spearlets,
LevelDB under the data dir), deploys every example, invokes each one in every
mode (sync, async + wait, stream), prints the results in a table and shuts down.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .. import errors, protocol as P
from ._base import EXIT_FAILED, EXIT_OK, Command
from ._output import print_table, short

#: the checkout this module sits in (spear/cli/cluster.py -> the repository root)
_CHECKOUT = Path(__file__).resolve().parents[2]


def add_up_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``spear up``."""
    p.add_argument("-n", "--spearlets", type=int, default=2, help="number of spearlets (default 2)")
    p.add_argument("--data", default="./.spear", help="state directory (default ./.spear)")
    p.add_argument("--port", type=int, default=7700, help="SMS port; spearlets use the next ones")
    p.add_argument("--store", choices=["memory", "leveldb"], default="leveldb")
    p.add_argument("--http", default="127.0.0.1:7780", help="HTTP gateway HOST:PORT (default 127.0.0.1:7780)")
    p.add_argument("--no-gateway", action="store_true", help="do not start the HTTP gateway")
    p.add_argument("--config", help="TOML configuration file passed to every daemon")
    p.add_argument("--host-root", action="append", metavar="PATH[:rw]",
                   help="a host directory functions may reach, read-only unless :rw (repeatable)")


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``spear demo``."""
    p.add_argument("--data", default="./.spear/demo")
    p.add_argument("--examples", default=None, help="examples directory (default: ./examples)")


def cmd_up(args: argparse.Namespace) -> int:
    """Run the embedded cluster until Ctrl-C or SIGTERM."""
    from ..cluster import run_up

    return run_up(args)


def find_examples(hint: str | None) -> Path:
    """The examples directory: the flag, ./examples, or the source checkout's."""
    candidates = [Path(hint)] if hint else []
    candidates += [Path("examples"), _CHECKOUT / "examples"]
    for c in candidates:
        if (c / "hello.wat").exists():
            return c.resolve()
    raise errors.NotFound("examples directory not found (run from the repository or pass --examples)")


def example_specs(ex: Path) -> list[tuple[P.FunctionSpec, bytes, list]]:
    """(spec, input, args) for every example."""
    return [
        (P.FunctionSpec(name="hello-wasm", runtime="wasm", artifact=(ex / "hello.wat").read_bytes()),
         b"spear", []),
        (P.FunctionSpec(name="add-wasm", runtime="wasm", artifact=(ex / "add.wat").read_bytes(),
                        handler="add", pool=P.PoolSettings(min_warm=1)), b"", [2, 40]),
        (P.FunctionSpec(name="py-upper", runtime="process", handler="handlers:upper",
                        workdir=str(ex), pool=P.PoolSettings(min_warm=1)), b"hello from python", []),
        (P.FunctionSpec(name="shout", runtime="process", command=["sh", str(ex / "shout.sh")]),
         b"quiet words", []),
        (P.FunctionSpec(name="container-upper", runtime="docker", image="spear-test/busybox:latest",
                        command=["tr", "a-z", "A-Z"]), b"inside a container", []),
    ]


def _every_mode(c, spec: P.FunctionSpec, data: bytes, fargs: list, node: str) -> list[tuple[str, object]]:
    """Invoke one deployed example sync, async + wait and streamed: ``(mode, result)`` each."""
    out = [("sync", c.invoke(spec.name, data, args=fargs, node=node))]
    eid = c.submit(spec.name, data, args=fargs, node=node)
    out.append(("async", c.wait(eid, timeout=30, node=node)))
    chunks, res = [], None
    for item in c.stream(spec.name, data, args=fargs, node=node):
        if isinstance(item, bytes):
            chunks.append(item)
        else:
            res = item
    out.append((f"stream ({len(chunks)} log chunks)", res))
    return out


def cmd_demo(args: argparse.Namespace) -> int:
    """Start a cluster, deploy every example, invoke each in every mode, print a table."""
    from ..client import Client
    from ..cluster import Cluster

    ex = find_examples(args.examples)
    t0 = time.perf_counter()
    rows: list[list] = []
    failures = 0
    # the Python example's workdir is the examples directory: let it in, read-only
    with Cluster(args.data, spearlets=2, store="leveldb", host_roots=[str(ex)]) as cluster:
        cluster.start(wait=30)
        print(f"cluster up in {time.perf_counter() - t0:.2f}s: SMS {cluster.sms_addr}, "
              f"spearlets {', '.join(cluster.spearlet_addrs)}", flush=True)
        node = cluster.spearlet_addrs[0]
        with Client(cluster.sms_addr, timeout=30) as c:
            info = c.nodes()[0]
            for spec, data, fargs in example_specs(ex):
                if spec.runtime not in info.runtimes:
                    why = info.unavailable.get(spec.runtime, "not offered")
                    rows.append([spec.name, spec.runtime, "-", "skipped", why[:50], "-"])
                    continue
                try:
                    c.deploy(spec, node=node)
                except errors.SpearError as exc:
                    failures += 1
                    rows.append([spec.name, spec.runtime, "deploy", "error", f"{exc.code}: {exc.message}"[:50], "-"])
                    continue
                for mode, res in _every_mode(c, spec, data, fargs, node):
                    rows.append([spec.name, spec.runtime, mode, res.status, short(res.output),
                                 f"{res.info.timings.total * 1e3:.2f}"])
                    failures += not res.ok
    print_table("spear demo", ["function", "runtime", "mode", "status", "output", "ms"], rows)
    print(f"demo finished in {time.perf_counter() - t0:.2f}s; cluster stopped", flush=True)
    return EXIT_FAILED if failures else EXIT_OK


COMMANDS = {
    "up": Command(add_up_arguments, cmd_up),
    "demo": Command(add_demo_arguments, cmd_demo),
}
