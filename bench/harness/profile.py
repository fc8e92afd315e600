"""``--profile``: unmeasured SMS and direct throughput passes (wasm, Python) with py-spy on every process."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from .procs import run_async
from .session import Session
from .throughput import pipelined

#: leaf frames of threads that are waiting, not working (py-spy may still sample them)
_WAITING = ("Condition.wait (threading.py)", "Event.wait (threading.py)", "select (selectors.py)",
            "_worker (concurrent/futures/thread.py)")


def py_spy() -> str | None:
    """The py-spy executable beside this Python, or on PATH."""
    cand = Path(sys.executable).parent / "py-spy"
    if cand.exists():
        return str(cand)
    return shutil.which("py-spy")


#: the functions a profile pass loads: (function, label)
PROFILED = (("b-add", "wasm export"), ("b-noop", "Python handler"))
#: the processes sampled, by their role in :meth:`Session.pids`
ROLES = ("client", "sms", "spearlet")


def _attach(spy: str, pids: dict[str, int], out_dir: Path, prefix: str) -> dict:
    spies = {}
    for name in ROLES:
        path = out_dir / f"{prefix}.{name}.txt"
        spies[name] = (subprocess.Popen(
            [spy, "record", "--pid", str(pids[name]), "--rate", "1000", "--format", "raw",
             "--nonblocking", "--output", str(path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True), path)
    return spies


def _detach(spies: dict) -> None:
    for p, _ in spies.values():
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    for p, _ in spies.values():
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _collect(spies: dict, out: dict) -> None:
    """Each sampled process's summary (or py-spy's error) into ``out`` by role."""
    for name, (p, path) in spies.items():
        err = p.stderr.read().decode(errors="replace") if p.stderr else ""
        if p.stderr:
            p.stderr.close()
        if not path.exists():
            out[name] = {"error": err.strip()[-300:]}
            continue
        out[name] = summarise_collapsed(path.read_text())
        out[name]["file"] = str(path)


def _profiled_run(s: Session, spy: str, out_dir: Path, name: str, path: str, node: str | None) -> dict:
    """One pipelined run of ``name`` with every process sampled; its rate, CPU and profiles."""
    spies = _attach(spy, s.pids(), out_dir, f"{name}.{path}")
    time.sleep(1.0)  # py-spy attaches
    n = max(s.plan.rate_n, 40_000 if path == "sms" else 10_000)
    try:
        r = run_async(pipelined(s, name, node, n, s.plan.window))
    finally:
        _detach(spies)
    out = {"rate": r["rate"], "cpu": r["cpu_summary"]}
    _collect(spies, out)
    return out


def profile_pass(s: Session) -> None:
    """Each of :data:`PROFILED`, via the SMS and direct, under py-spy; stacks and ``summary.json`` to DIR."""
    spy = py_spy()
    if spy is None:
        s.res.skipped["profile"] = "py-spy not found (pip install py-spy)"
        return
    out_dir = Path(s.profile)
    out_dir.mkdir(parents=True, exist_ok=True)
    s.prog.step("profile: py-spy on client, SMS and spearlet")
    with s.client() as c:
        for name, _ in PROFILED:
            s.ensure(c, name, sms=True, direct=True)
    prof = {}
    for name, label in PROFILED:
        prof[name] = {"label": label}
        for path, node in (("sms", None), ("direct", s.node)):
            prof[name][path] = _profiled_run(s, spy, out_dir, name, path, node)
    s.res.raw["profile"] = prof
    (out_dir / "summary.json").write_text(json.dumps(prof, indent=2))


def summarise_collapsed(text: str, top: int = 25) -> dict:
    """Self and inclusive shares per function from py-spy's raw (collapsed) output.

    Shares are of the samples where a thread was working: samples whose
    leaf is a thread wait (the wasm epoch ticker, idle pool threads) are
    counted apart as ``waiting_pct``. Under CPU contention a runnable thread
    that is waiting for a core is sampled where it stands, typically right
    after a syscall that woke another thread (``Socket.send``) or in the
    event loop's own C code (``Runner.run`` under uvloop).
    """
    strip = re.compile(r":\d+\)$")
    self_t: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = waiting = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [strip.sub(")", f) for f in stack.split(";")]
        leaf = frames[-1]
        if leaf in _WAITING:
            waiting += n
            continue
        total += n
        self_t[leaf] = self_t.get(leaf, 0) + n
        for f in set(frames):
            incl[f] = incl.get(f, 0) + n
    if not total:
        return {"samples": 0, "waiting_samples": waiting}

    def share(d: dict) -> list:
        return [(k, round(v / total * 100, 1)) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]]

    return {"samples": total, "waiting_samples": waiting, "self": share(self_t), "inclusive": share(incl)}


def print_profile(prof: dict) -> None:
    """Where each process's time went while profiled, per function and path."""
    for name, runs in prof.items():
        for path in ("sms", "direct"):
            run = runs.get(path) or {}
            print(f"\nprofile (py-spy): {runs.get('label', name)}, {path}, "
                  f"{run.get('rate', 0):,.0f}/s while sampled; {run.get('cpu', '')}")
            for role in ROLES:
                p = run.get(role) or {}
                if "self" not in p:
                    print(f"  {role}: no profile ({p.get('error', 'no samples')})")
                    continue
                print(f"  {role}: {p['samples']} working samples ({p['waiting_samples']} in thread waits "
                      "left out); top self time:")
                for fn, share in p["self"][:12]:
                    print(f"    {share:5.1f}%  {fn}")
