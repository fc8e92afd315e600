"""The cluster side of a run: the embedded cluster, the functions it deploys, its processes.

:class:`Session` starts an SMS and Spearlet(s) on loopback
(:class:`spear.cluster.Cluster`), deploys the bench functions on demand and
stops everything; the section modules measure through it.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .floor import Floor
from .plan import Plan
from .procs import FUNCTIONS_DIR, Progress
from .results import Results

#: the repository's examples (the bench runs from a checkout); $SPEAR_EXAMPLES overrides
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def examples_dir() -> Path:
    """Where the example functions are: ``$SPEAR_EXAMPLES`` or the checkout's ``examples/``."""
    return Path(os.environ.get("SPEAR_EXAMPLES") or EXAMPLES).resolve()


def function_specs(ex: Path, cpus: int, fib_arg: int = 25) -> dict:
    """name -> (spec, input, args) of every function the bench deploys."""
    from spear import protocol as P

    add = (ex / "add.wat").read_bytes()
    hello = (ex / "hello.wat").read_bytes()
    warm1 = P.PoolSettings(min_warm=1)
    hd = str(ex)
    noop_worker = [sys.executable, str(FUNCTIONS_DIR / "noop_worker.py")]
    return {
        "b-add": (P.FunctionSpec(name="b-add", runtime="wasm", artifact=add, handler="add", pool=warm1),
                  b"", [1, 2]),
        "b-hello": (P.FunctionSpec(name="b-hello", runtime="wasm", artifact=hello, pool=warm1), b"", []),
        "b-worker": (P.FunctionSpec(name="b-worker", runtime="process", mode="pooled",
                                    command=noop_worker, pool=warm1), b"", []),
        "b-noop": (P.FunctionSpec(name="b-noop", runtime="process", handler="handlers:noop", workdir=hd,
                                  pool=warm1), b"", []),
        "b-echo": (P.FunctionSpec(name="b-echo", runtime="process", handler="handlers:echo", workdir=hd,
                                  pool=warm1), b"", []),
        "b-oneshot": (P.FunctionSpec(name="b-oneshot", runtime="process", command=["cat"]), b"", []),
        "b-fib": (P.FunctionSpec(name="b-fib", runtime="process", handler="handlers:fib", workdir=hd,
                                 pool=P.PoolSettings(min_warm=cpus, max=cpus)), str(fib_arg).encode(), []),
    }


def compile_bytecode() -> str:
    """Write spear's ``.pyc`` files, as installing a wheel does, before the daemons start.

    An editable checkout run with ``PYTHONDONTWRITEBYTECODE=1`` (set on the
    machines this was measured on) would otherwise compile every edited module
    from source at each daemon start, which the start to first result would
    count (~40 ms). What was done goes into the JSON.
    """
    import compileall

    import spear

    root = Path(spear.__file__).parent
    try:
        ok = compileall.compile_dir(str(root), quiet=2)
    except OSError as exc:  # a read-only install: its bytecode is what it is
        return f"not compiled: {exc}"
    return f"compiled {root}" if ok else f"compiled {root} (some files failed)"


class Session:
    """Owns the cluster, the floor servers and the results of one run."""

    def __init__(self, plan: Plan, sections: list[str], prog: Progress, *, profile: str | None,
                 keep: bool, data: str | None) -> None:
        self.plan = plan
        self.sections = sections
        self.prog = prog
        self.res = Results()
        self.profile = profile
        self.keep = keep
        self.data_arg = data
        self.data: Path | None = None
        self.cluster = None
        self.node = ""
        self.sms = ""
        self.ex: Path | None = None
        self.specs: dict = {}
        self.deployed_sms: set[str] = set()
        self.deployed_direct: set[str] = set()
        self.cpus = os.cpu_count() or 1
        self.runtimes: list[str] = []
        self.unavailable: dict[str, str] = {}
        self.floor: Floor | None = None
        self.t_ready = 0.0

    def client(self, timeout: float = 60.0):
        """A blocking client of the SMS."""
        from spear.client import Client

        return Client(self.sms, timeout=timeout)

    def ensure(self, c, name: str, *, sms: bool, direct: bool) -> None:
        """Deploy ``name`` (through the SMS and/or directly) and warm it."""
        spec, data, args = self.specs[name]
        if sms and name not in self.deployed_sms:
            c.deploy(spec)
            self.deployed_sms.add(name)
            # the node fetches it on the first dispatch; warm that path now
            for _ in range(3):
                c.invoke(name, data, args=args).raise_for_status()
        if direct and name not in self.deployed_direct:
            have = {f.name for f in c.functions(node=self.node)}
            if name not in have:
                c.deploy(spec, node=self.node)
            self.deployed_direct.add(name)

    def start_cluster(self) -> None:
        """SMS + ``plan.spearlets`` Spearlets on loopback; what the first node offers."""
        from spear.cluster import Cluster

        self.ex = examples_dir()
        self.specs = function_specs(self.ex, self.cpus, self.plan.fib_arg)
        base = Path(self.data_arg) if self.data_arg else Path(tempfile.mkdtemp(prefix="spear-bench-"))
        self.data = base
        cfg = base / "bench.toml"
        base.mkdir(parents=True, exist_ok=True)
        # the default per-node limit (64) would refuse a window of hundreds in flight;
        # the bench's pooled worker is `sys.executable`, which may sit where the
        # sandbox user cannot reach (pyenv under /root): run functions as ourselves
        cfg.write_text(f"[spearlet]\nmax_concurrency = {max(4096, self.plan.window * 4)}\n"
                       f"[runtimes.process]\nuser = \"\"\n")
        self.prog.step(f"cluster: SMS + {self.plan.spearlets} spearlet(s)")
        self.res.raw["bytecode"] = compile_bytecode()
        t0 = time.perf_counter()
        self.cluster = Cluster(base / "cluster", spearlets=self.plan.spearlets,
                               store=os.environ.get("SPEAR_BENCH_STORE", "leveldb"),
                               config=str(cfg), log_level="warning",
                               host_roots=[str(self.ex)])  # the handlers' workdir
        self.cluster.start(wait=60)
        self.t_ready = time.perf_counter() - t0
        self.sms = self.cluster.sms_addr
        self.node = self.cluster.spearlet_addrs[0]
        with self.client() as c:
            info = [n for n in c.nodes() if n.address == self.node] or c.nodes()
            self.runtimes = list(info[0].runtimes)
            self.unavailable = dict(info[0].unavailable)
        self.res.raw["cluster"] = {"data": str(base), "sms": self.sms, "spearlets": self.cluster.spearlet_addrs,
                                   "runtimes": self.runtimes, "unavailable": self.unavailable,
                                   "ready_s": self.t_ready}

    def first_result(self) -> None:
        """``spear up`` to first result: ready time + deploy + first invoke through the SMS."""
        from spear import protocol as P

        spec = P.FunctionSpec(name="b-first", runtime="wasm", artifact=(self.ex / "add.wat").read_bytes(),
                              handler="add")
        with self.client() as c:
            t0 = time.perf_counter()
            c.deploy(spec)
            r = c.invoke("b-first", args=[1, 2])
            t1 = time.perf_counter() - t0
        r.raise_for_status()
        self.res.raw["cluster"]["deploy_first_invoke_s"] = t1
        self.res.add("startup", "startup.first_result",
                     f"cluster start -> first result (SMS + {self.plan.spearlets} spearlet)",
                     self.t_ready + t1, "s", target=("<=", 0.4),
                     note=f"ready {self.t_ready:.2f}s + deploy & first invoke {t1 * 1e3:.0f} ms")

    def stop_cluster(self) -> None:
        """Stop the cluster; remove its temporary data unless ``--keep`` or ``--data``."""
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None
        if not self.keep and not self.data_arg and self.data is not None:
            shutil.rmtree(self.data, ignore_errors=True)

    def pids(self) -> dict[str, int]:
        """This process and the cluster's daemons, by role."""
        out = {"client": os.getpid()}
        if self.cluster is not None:
            out["sms"] = self.cluster.sms.pid
            for i, p in enumerate(self.cluster.spearlets):
                out["spearlet" if i == 0 else f"spearlet{i + 1}"] = p.pid
        return out

    def measure_rss(self, label: str = "idle") -> dict:
        """RSS (MB) of every daemon, recorded under ``raw["rss_mb"][label]``."""
        import psutil

        out = {}
        for name, pid in self.pids().items():
            if name == "client":
                continue
            try:
                out[name] = psutil.Process(pid).memory_info().rss / 1e6
            except psutil.Error:
                out[name] = None
        self.res.raw.setdefault("rss_mb", {})[label] = out
        return out

    def section_rss(self) -> None:
        """Idle RSS of the SMS and of a Spearlet, before any load."""
        self.prog.step("rss: idle SMS and spearlet")
        time.sleep(0.5 if self.plan.quick else 1.5)
        rss = self.measure_rss("idle")
        self.res.add("rss", "rss.sms", "idle RSS of the SMS", rss.get("sms"), "MB", target=("<", 80.0))
        self.res.add("rss", "rss.spearlet", "idle RSS of a spearlet", rss.get("spearlet"), "MB",
                     target=("<", 80.0))
        both = (rss["sms"] + rss["spearlet"]) if rss.get("sms") and rss.get("spearlet") else None
        self.res.add("rss", "rss.sms_spearlet", "idle RSS of the SMS and one spearlet together",
                     both, "MB", target=("<=", 90.0))

    def note_rss_after_load(self) -> None:
        """Add the RSS after the load to the idle RSS rows' notes."""
        loaded = self.measure_rss("after_load")
        for f in self.res.figures:
            if f.key in ("rss.sms", "rss.spearlet"):
                v = loaded.get(f.key.split(".")[1])
                f.note = f"after the load: {v:.1f} MB" if v else ""
