"""``spear demo``: the main job in one command.

Starts an embedded cluster (SMS + 2 Spearlets on loopback, LevelDB under the
data dir), deploys every example, invokes each one in every mode (sync,
async + wait, stream), prints the results in a table and shuts down.
"""

from __future__ import annotations

import time
from pathlib import Path

from . import errors, protocol as P
from .client import Client
from .cluster import Cluster


def find_examples(hint: str | None) -> Path:
    """The examples directory: the flag, ./examples, or the source checkout's."""
    candidates = [Path(hint)] if hint else []
    candidates += [Path("examples"), Path(__file__).resolve().parent.parent / "examples"]
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


def _short(b: bytes, n: int = 34) -> str:
    s = b.decode("utf-8", "replace").strip().replace("\n", "\\n")
    return s if len(s) <= n else s[: n - 1] + "…"


def run_demo(args) -> int:
    from .cli import print_table

    ex = find_examples(args.examples)
    t0 = time.perf_counter()
    rows = []
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
                # sync
                res = c.invoke(spec.name, data, args=fargs, node=node)
                rows.append([spec.name, spec.runtime, "sync", res.status, _short(res.output),
                             f"{res.info.timings.total * 1e3:.2f}"])
                failures += not res.ok
                # async + wait
                eid = c.submit(spec.name, data, args=fargs, node=node)
                res = c.wait(eid, timeout=30, node=node)
                rows.append([spec.name, spec.runtime, "async", res.status, _short(res.output),
                             f"{res.info.timings.total * 1e3:.2f}"])
                failures += not res.ok
                # stream
                chunks = []
                for item in c.stream(spec.name, data, args=fargs, node=node):
                    if isinstance(item, bytes):
                        chunks.append(item)
                    else:
                        res = item
                rows.append([spec.name, spec.runtime, f"stream ({len(chunks)} log chunks)", res.status,
                             _short(res.output), f"{res.info.timings.total * 1e3:.2f}"])
                failures += not res.ok
    print_table("spear demo", ["function", "runtime", "mode", "status", "output", "ms"], rows)
    print(f"demo finished in {time.perf_counter() - t0:.2f}s; cluster stopped", flush=True)
    return 1 if failures else 0
