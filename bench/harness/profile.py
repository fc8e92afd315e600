"""``--profile``: an unmeasured SMS and direct throughput pass with py-spy on the SMS and the Spearlet."""

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


def _attach(spy: str, pids: dict[str, int], out_dir: Path) -> dict:
    spies = {}
    for name in ("sms", "spearlet"):
        path = out_dir / f"{name}.txt"
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


def profile_pass(s: Session) -> None:
    """Run the load under py-spy; write raw stacks and ``summary.json`` to ``--profile``."""
    spy = py_spy()
    if spy is None:
        s.res.skipped["profile"] = "py-spy not found (pip install py-spy)"
        return
    out_dir = Path(s.profile)
    out_dir.mkdir(parents=True, exist_ok=True)
    s.prog.step("profile: py-spy on SMS and spearlet")
    spies = _attach(spy, s.pids(), out_dir)
    time.sleep(1.0)  # py-spy attaches
    try:
        r = run_async(pipelined(s, "b-add", None, max(s.plan.rate_n, 40_000), s.plan.window))
        r2 = run_async(pipelined(s, "b-add", s.node, max(s.plan.rate_n, 10_000), s.plan.window))
    finally:
        _detach(spies)
    prof = {"rate_sms_while_profiled": r["rate"], "rate_direct_while_profiled": r2["rate"],
            "cpu_sms_pass": r["cpu_summary"], "cpu_direct_pass": r2["cpu_summary"]}
    for name, (p, path) in spies.items():
        err = p.stderr.read().decode(errors="replace") if p.stderr else ""
        if p.stderr:
            p.stderr.close()
        if not path.exists():
            prof[name] = {"error": err.strip()[-300:]}
            continue
        prof[name] = summarise_collapsed(path.read_text())
        prof[name]["file"] = str(path)
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
    """Where the SMS's and the Spearlet's time went while profiled."""
    print(f"\nprofile (py-spy, SMS load {prof.get('rate_sms_while_profiled', 0):,.0f}/s, "
          f"direct {prof.get('rate_direct_while_profiled', 0):,.0f}/s while sampled)")
    print(f"  SMS pass: {prof.get('cpu_sms_pass', '')}; direct pass: {prof.get('cpu_direct_pass', '')}")
    for name in ("sms", "spearlet"):
        p = prof.get(name) or {}
        if "self" not in p:
            print(f"  {name}: no profile ({p.get('error', 'no samples')})")
            continue
        print(f"  {name}: {p['samples']} working samples ({p['waiting_samples']} in thread waits left out); "
              "top self time:")
        for fn, share in p["self"][:15]:
            print(f"    {share:5.1f}%  {fn}")
