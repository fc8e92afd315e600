"""Durability under storage faults and SMS stalls, with real daemons (issue 14).

Every test runs real processes (``python -m spear sms|spearlet``) on a real
LevelDB store and checks the numbers the SPEC promises (8b): every accepted
execution ends in exactly one terminal state and is still there after an
SMS restart, nothing acknowledged goes missing, a refused submission never
runs, and an idempotency key gives exactly one execution.

Effects are counted outside the SMS: the functions append the token they
were given to a file (``marks``) in a directory the Spearlet allows
(``host_roots``), so "ran once" means "one line", whatever the SMS says.
That directory lives under the system temporary directory, not pytest's
(0700) one: a root Spearlet runs functions as ``nobody``.

The disk-full test mounts a 16 MiB tmpfs as the SMS's store. It needs root;
elsewhere it is skipped with the reason, except under ``CI=true``, where it
must run.
"""

from __future__ import annotations

import collections
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from spear import Client, errors, protocol as P
from spear.cluster import Cluster, free_port
from tests.helpers import ADD_WAT, FAST_HB, spear_cli, wait_for

TERMINAL = P.TERMINAL
#: appends its input (one line) to ./marks, then echoes it; DELAY seconds first
MARK = ["sh", "-c", 'x=$(cat); sleep "${DELAY:-0}"; echo "$x" >> marks; echo "$x"']


# ---------------------------------------------------------------- helpers


def scrape(port: int) -> dict[str, float]:
    """The SMS's /metrics as {series: value} (label sets kept in the name)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


@pytest.fixture
def marks():
    """A directory functions may write (world-writable: they run as nobody under root)."""
    d = Path(tempfile.mkdtemp(prefix="spear-marks-"))
    os.chmod(d, 0o777)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def ran(marks: Path) -> collections.Counter:
    """How many times each token's function ran (lines in marks/marks)."""
    f = marks / "marks"
    return collections.Counter(f.read_text().split()) if f.exists() else collections.Counter()


def mark_spec(marks: Path, name: str = "mark", *, delay: float = 0, retries: int = 0) -> P.FunctionSpec:
    return P.FunctionSpec(name=name, runtime="process", command=MARK, workdir=str(marks),
                          env={"DELAY": str(delay)}, retries=retries, idempotent=retries > 0,
                          limits=P.Limits(timeout=30))


def sms_config(d: Path, metrics_port: int) -> str:
    d.mkdir(parents=True, exist_ok=True)
    cfg = d / "sms.toml"
    cfg.write_text(f"[sms]\nmetrics_port = {metrics_port}\n")
    return str(cfg)


def restart_sms(c: Cluster, *, kill: bool = False, nodes: int = 1) -> None:
    """Stop the SMS (SIGTERM, or SIGKILL: a crash), start it on the same store,
    and wait until the Spearlets are back."""
    if kill:
        os.kill(c.sms.pid, signal.SIGKILL)
        c.sms.wait(10)
    else:
        assert c.stop_process(c.sms) == 0
    c.start_sms()
    c.wait_ready(nodes, timeout=30)


def all_executions(cl: Client) -> dict[str, P.ExecutionInfo]:
    items, total = cl.executions(limit=10000)
    assert len(items) == total
    return {i.execution_id: i for i in items}


def balanced(counts: dict[str, int], active: int) -> bool:
    return counts.get("submitted", 0) == sum(counts.get(s, 0) for s in TERMINAL) + active


def sms_log(c: Cluster) -> str:
    return (c.data / "sms.log").read_text(errors="replace")


def start_sms_process(data: Path, log: Path) -> subprocess.Popen:
    """A bare SMS on the store ``data`` (its stderr in ``log``), for start-up checks."""
    return subprocess.Popen(
        [sys.executable, "-m", "spear", "sms", "--listen", f"tcp://127.0.0.1:{free_port()}",
         "--data", str(data), "--store", "leveldb"],
        stdout=subprocess.DEVNULL, stderr=open(log, "wb"), start_new_session=True)


def refuses_to_start(data: Path, log: Path) -> tuple[int, str]:
    """Start an SMS on ``data``; it must exit by itself. Returns (exit code, stderr)."""
    p = start_sms_process(data, log)
    try:
        code = p.wait(20)
    except subprocess.TimeoutExpired:
        Cluster.stop_process(p)
        raise AssertionError(f"the SMS started on the damaged store {data}: "
                             f"{log.read_text(errors='replace')[-2000:]}") from None
    return code, log.read_text(errors="replace")


def crashed_before_its_dispatch_left(r) -> bool:
    """An execution accepted (so persisted) just before a SIGKILL of the SMS whose
    Dispatch had not left the process yet: its node never heard of it, and the
    restarted SMS cannot tell that from a node that ran it and forgot (at most
    once): it ends lost, and it never ran (the callers check the marks)."""
    return (r.status == "lost" and r.info.error is not None
            and "no longer reports" in r.info.error.message)


def store_files(path: Path) -> dict[str, int]:
    return {f.name: f.stat().st_size for f in path.iterdir() if f.is_file()}


# ---------------------------------------------------------------- 1. disk full


def test_disk_full_refuses_new_work_keeps_what_it_acknowledged_and_recovers(
        tmp_path, small_tmpfs, fill_disk, marks):
    os.makedirs(tmp_path / "c", mode=0o700)
    small_disk = small_tmpfs(tmp_path / "c" / "sms", 16)  # the SMS's store
    mport = free_port()
    acked: dict[str, str] = {}  # token -> execution id
    refused: list[str] = []
    with Cluster(tmp_path / "c", spearlets=1, config=sms_config(tmp_path / "cfg", mport),
                 host_roots=[f"{marks}:rw"], **FAST_HB) as c:
        c.start(wait=30)
        with Client(c.sms_addr, timeout=20) as cl:
            cl.deploy(mark_spec(marks))
            cl.deploy(mark_spec(marks, "slow", delay=1.0))
            for i in range(20):
                acked[f"a{i}"] = cl.submit("mark", f"a{i}".encode(), retries=0)
            # these finish while the store is full: their ends are kept in memory
            running = {f"r{i}": cl.submit("slow", f"r{i}".encode(), retries=0) for i in range(3)}
            acked.update(running)
            assert scrape(mport)["spear_sms_store_healthy"] == 1

            fill_disk(small_disk / "filler")
            # each submission is acknowledged (then it must survive) or refused
            # UNAVAILABLE (then it must never run); never anything else
            for i in range(2000):
                token = f"b{i}"
                try:
                    acked[token] = cl.submit("mark", token.encode(), retries=0)
                except errors.SpearError as exc:
                    assert exc.code == "UNAVAILABLE", (exc.code, exc.message)
                    assert "storage" in exc.message, exc.message
                    refused.append(token)
                    if len(refused) >= 5:
                        break
            assert refused, "2000 submissions on a full disk and none refused"
            # the SMS is read-only: every kind of new work is refused the same way
            with pytest.raises(errors.Unavailable, match="storage"):
                cl.invoke("mark", b"sync-refused")
            refused.append("sync-refused")
            with pytest.raises(errors.Unavailable, match="storage"):
                cl.deploy(mark_spec(marks, "mark2"))
            # (an artifact is looked up in the store first: that read must not
            # fail any other way while the store is being reopened)
            wait_for(lambda: scrape(mport)["spear_sms_store_write_errors_total"] >= 1, 5,
                     "the failed write counted")
            time.sleep(0.5)  # a few probes (every 0.2 s) fail meanwhile
            with pytest.raises(errors.Unavailable):
                cl.deploy(P.FunctionSpec(name="add", runtime="wasm", handler="add",
                                         artifact=ADD_WAT))
            # reads keep working
            assert [n.state for n in cl.nodes()] == ["ready"]
            assert [f.name for f in cl.functions()] == ["mark", "slow"]
            listed = all_executions(cl)
            assert set(acked.values()) <= set(listed)
            assert cl.execution(acked["a0"]).execution_id == acked["a0"]
            for eid in running.values():  # ended while nothing could be written
                assert cl.wait(eid, timeout=30).ok
            m = scrape(mport)
            assert m["spear_sms_store_healthy"] == 0
            assert m["spear_sms_store_write_errors_total"] >= 1
            assert "STORE WRITE FAILED" in sms_log(c)
            assert "No space left on device" in sms_log(c)

            os.unlink(small_disk / "filler")

            def accepts_again():
                try:
                    token = f"c{len(acked)}"
                    acked[token] = cl.submit("mark", token.encode(), retries=0)
                    return True
                except errors.Unavailable:
                    return False
            wait_for(accepts_again, 20, "the SMS to accept work again once space was freed",
                     step=0.2)
            assert scrape(mport)["spear_sms_store_healthy"] == 1
            assert cl.invoke("mark", b"sync-after").ok
            acked["sync-after"] = ""
            cl.deploy(mark_spec(marks, "mark2"))
            for token, eid in acked.items():
                if eid:
                    assert cl.wait(eid, timeout=30).status == "succeeded", token
            assert "store writes succeed again" in sms_log(c)

        restart_sms(c)
        with Client(c.sms_addr, timeout=20) as cl:
            listed = all_executions(cl)
            missing = [t for t, eid in acked.items() if eid and eid not in listed]
            assert not missing, f"acknowledged executions missing after the restart: {missing}"
            assert all(listed[eid].status == "succeeded" for eid in acked.values() if eid)
            assert len(listed) == len(acked)  # the sync one included; nothing refused is there
            assert {f.name for f in cl.functions()} == {"mark", "slow", "mark2"}
            st = cl.stats()
            assert st.counts["submitted"] == len(acked), st.counts
            assert balanced(st.counts, st.executions_active), st.counts
    runs = ran(marks)
    assert {t: n for t, n in runs.items() if n != 1} == {}, "a function ran twice"
    assert set(runs) == set(acked), (set(runs) ^ set(acked))
    assert not set(refused) & set(runs), "a refused submission ran"


# ---------------------------------------------------------------- 2. and 3. damaged stores


def _populate(c: Cluster, marks: Path, n: int, prefix: str) -> tuple[set[str], set[str]]:
    """Deploy ``prefix``-mark and run ``n`` executions of it (half async, half sync)."""
    with Client(c.sms_addr, timeout=20) as cl:
        cl.deploy(mark_spec(marks, f"{prefix}-mark"))
        eids = set()
        for i in range(n):
            token = f"{prefix}{i}".encode()
            if i % 2:
                eids.add(cl.invoke(f"{prefix}-mark", token).execution_id)
            else:
                eids.add(cl.submit(f"{prefix}-mark", token))
        for eid in eids:
            assert cl.wait(eid, timeout=30).ok
        return {f"{prefix}-mark"}, eids


def test_missing_current_refuses_to_start_then_check_and_repair(tmp_path, marks):
    c = Cluster(tmp_path / "c", spearlets=1, host_roots=[str(marks)], **FAST_HB)
    try:
        c.start(wait=30)
        functions, eids = _populate(c, marks, 10, "p")
        c.stop_process(c.sms)
        store = c.data / "sms"
        (store / "CURRENT").unlink()
        before = store_files(store)

        code, err = refuses_to_start(store, tmp_path / "sms-refused.log")
        assert code == 3  # UNAVAILABLE
        assert "CURRENT" in err and "spear store repair" in err and str(store) in err, err
        assert "Traceback" not in err, err
        assert store_files(store) == before, "the refused start created or changed files"

        r = spear_cli("store", "check", str(store))
        assert r.returncode == 1, r.stdout + r.stderr
        assert "DAMAGED" in r.stderr and "CURRENT is missing" in r.stderr, r.stderr

        r = spear_cli("store", "repair", str(store), "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        rep = json.loads(r.stdout)
        assert rep["ok"] and rep["backup"], rep
        backup = Path(rep["backup"])
        assert backup.is_dir() and store_files(backup) == before, "the backup is not the store as it was"
        assert rep["records"]["fn"] == len(functions) and rep["records"]["ex"] == len(eids), rep
        assert spear_cli("store", "check", str(store)).returncode == 0

        c.start_sms()
        c.wait_ready(1, timeout=30)
        with Client(c.sms_addr, timeout=20) as cl:
            assert {f.name for f in cl.functions()} == functions
            listed = all_executions(cl)
            assert set(listed) == eids
            assert all(listed[e].status == "succeeded" for e in eids)
            st = cl.stats()
            assert st.counts["submitted"] == len(eids) and balanced(st.counts, st.executions_active)
            assert cl.invoke("p-mark", b"after-repair").ok  # and it works
    finally:
        c.stop()
    assert sum(ran(marks).values()) == len(eids) + 1


def test_truncated_table_file_is_named_then_repair_reports_what_is_left(tmp_path, marks):
    c = Cluster(tmp_path / "c", spearlets=1, host_roots=[str(marks)], **FAST_HB)
    store = c.data / "sms"
    try:
        c.start(wait=30)
        kept_fns, kept_eids = _populate(c, marks, 6, "old")
        # the next start turns the first run's log into a table file, which
        # holds everything above; the second run's records go to a newer one
        restart_sms(c)
        _populate(c, marks, 6, "new")
    finally:
        c.stop()
    from spear.store.leveldb import LevelDBStore

    umask = os.umask(0o077)
    try:
        LevelDBStore(store).close()  # the second run's log becomes a table too
    finally:
        os.umask(umask)
    tables = sorted(glob.glob(str(store / "*.ldb")))
    assert len(tables) >= 2, os.listdir(store)
    victim = Path(tables[-1])
    os.truncate(victim, victim.stat().st_size // 2)

    code, err = refuses_to_start(store, tmp_path / "sms-refused.log")
    assert code == 3  # UNAVAILABLE
    assert victim.name in err and "spear store repair" in err, err
    assert "Traceback" not in err, err

    r = spear_cli("store", "check", str(store))
    assert r.returncode == 1 and victim.name in r.stderr, r.stdout + r.stderr

    r = spear_cli("store", "repair", str(store), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads(r.stdout)
    assert rep["ok"] and Path(rep["backup"]).is_dir(), rep
    # LevelDB's repairer set the damaged table aside: the report says which
    assert rep["dropped"] == [f"lost/{victim.name}"], rep
    assert (store / "lost" / victim.name).exists()
    # what is left: the first run's records, all of them
    assert rep["records"]["fn"] >= len(kept_fns) and rep["records"]["ex"] >= len(kept_eids), rep

    try:
        c.start(wait=30)
        with Client(c.sms_addr, timeout=20) as cl:
            fns = {f.name for f in cl.functions()}
            listed = all_executions(cl)
            assert kept_fns <= fns and kept_eids <= set(listed)
            assert len(fns) == rep["records"]["fn"] and len(listed) == rep["records"]["ex"]
            assert all(i.status in TERMINAL for i in listed.values())
    finally:
        c.stop()


# ---------------------------------------------------------------- 4. the SMS stalls


def test_sigstop_of_the_sms_beyond_the_heartbeat_timeout_costs_no_node_and_no_execution(
        tmp_path, marks):
    mport = free_port()
    with Cluster(tmp_path / "c", spearlets=2, config=sms_config(tmp_path / "cfg", mport),
                 host_roots=[str(marks)], **FAST_HB) as c:
        c.start(wait=30)
        with Client(c.sms_addr, timeout=20) as cl:
            cl.deploy(mark_spec(marks, "once", delay=1.5))               # at-most-once
            cl.deploy(mark_spec(marks, "again", delay=1.5, retries=2))   # retried on a node loss
            eids = {}
            for i in range(4):
                eids[f"once{i}"] = cl.submit("once", f"once{i}".encode())
                eids[f"again{i}"] = cl.submit("again", f"again{i}".encode())
            wait_for(lambda: all(cl.execution(e).status in ("scheduled", "running")
                                 for e in eids.values()),
                     10, "every execution dispatched")
            before = scrape(mport)
            os.kill(c.sms.pid, signal.SIGSTOP)
            try:
                time.sleep(3.5)  # 3.5 heartbeat timeouts; the executions finish meanwhile
            finally:
                os.kill(c.sms.pid, signal.SIGCONT)

            results = {t: cl.wait(e, timeout=30) for t, e in eids.items()}
            assert {t: r.status for t, r in results.items() if not r.ok} == {}
            assert all(r.info.attempts == 1 for r in results.values())
            nodes = cl.nodes()
            assert [n.state for n in nodes] == ["ready", "ready"]
            after = scrape(mport)
            st = cl.stats()
    assert after["spear_sms_loop_stalls_total"] >= before["spear_sms_loop_stalls_total"] + 1
    assert after["spear_sms_loop_stalled_seconds_total"] >= 2.0
    assert after['spear_sms_node_transitions_total{state="ready"}'] >= 2  # (the series' name)
    assert after.get('spear_sms_node_transitions_total{state="unhealthy"}', 0) == 0
    assert after.get('spear_sms_node_transitions_total{state="gone"}', 0) == 0
    assert after["spear_sms_retries_total"] == 0
    assert st.counts.get("lost", 0) == 0 and st.counts.get("retried", 0) == 0
    assert st.counts["submitted"] == len(eids)
    log = sms_log(c)
    assert "the SMS loop stalled" in log
    assert "-> unhealthy" not in log, [l for l in log.splitlines() if "unhealthy" in l]
    runs = ran(marks)
    assert runs == collections.Counter({t: 1 for t in eids}), runs



def test_a_submission_sent_again_into_a_stalled_sms_runs_once(tmp_path, marks):
    """Client.submit gives its submission a key and sends it again when no answer
    comes: the SMS, stopped meanwhile, reads every try and starts the work once."""
    hb = dict(FAST_HB, heartbeat_timeout=4.0)  # a stall the nodes do not notice
    with Cluster(tmp_path / "c", spearlets=1, host_roots=[str(marks)], **hb) as c:
        c.start(wait=30)
        with Client(c.sms_addr, timeout=20) as cl:
            cl.deploy(mark_spec(marks, "once"))
            late: dict = {}
            connected, stopped = threading.Event(), threading.Event()

            def submit_into_the_stall():
                with Client(c.sms_addr, timeout=0.4) as impatient:
                    try:
                        impatient.ping()  # connected: what it sends reaches the SMS's socket
                        connected.set()
                        stopped.wait(10)
                        late["eid"] = impatient.submit("once", b"retried", retries=8)
                    except errors.SpearError as exc:  # pragma: no cover - reported below
                        late["error"] = exc
                    finally:
                        connected.set()

            caller = threading.Thread(target=submit_into_the_stall)
            caller.start()
            assert connected.wait(20)
            os.kill(c.sms.pid, signal.SIGSTOP)
            try:
                stopped.set()
                time.sleep(1.5)  # the caller's first tries time out meanwhile
            finally:
                os.kill(c.sms.pid, signal.SIGCONT)
            caller.join(30)
            assert "eid" in late, late
            assert cl.wait(late["eid"], timeout=30).ok
            st = cl.stats()
            assert st.counts["deduplicated"] >= 1, st.counts  # a later try found the first
            assert st.counts["submitted"] == 1, st.counts
            assert cl.executions()[1] == 1
    assert ran(marks) == collections.Counter(["retried"])


def test_work_dispatched_before_a_node_registers_again_after_an_sms_stall_is_not_lost(
        tmp_path, marks):
    with Cluster(tmp_path / "c", spearlets=1, host_roots=[str(marks)], **FAST_HB) as c:
        c.start(wait=30)
        node = c.spearlets[0]
        node_log = c.data / "spearlet-1.log"
        with Client(c.sms_addr, timeout=20) as cl:
            cl.deploy(mark_spec(marks, "once"))
            assert cl.invoke("once", b"warm").ok  # the node has the function
            before = node_log.read_text().count("reconnecting")
            os.kill(c.sms.pid, signal.SIGSTOP)
            try:
                wait_for(lambda: node_log.read_text().count("reconnecting") > before, 10,
                         "the Spearlet to give up on the silent SMS")
                time.sleep(0.2)  # (its new connection cannot finish its handshake yet)
                # the node comes back a moment after the SMS (as a busy host may)
                os.kill(node.pid, signal.SIGSTOP)
            finally:
                os.kill(c.sms.pid, signal.SIGCONT)
            try:
                eid = cl.submit("once", b"after-the-stall")
            finally:
                os.kill(node.pid, signal.SIGCONT)
            result = cl.wait(eid, timeout=30)
            assert result.status in TERMINAL and ran(marks)["after-the-stall"] <= 1
            assert result.ok, (result.status, result.info.error)


# ---------------------------------------------------------------- 5. idempotency keys


def _curve(d: Path) -> dict[str, str]:
    """Key pairs and configurations of a CURVE cluster: the SMS, one node, two callers."""
    from spear.mesh.security import keygen

    keys = {n: keygen(d / "keys", n)[:2] for n in ("sms", "node1", "alice", "ivan")}
    cfgs = {}
    for own in keys:
        f = d / f"{own}.toml"
        f.write_text(f'[security]\nkey = "{keys[own][1]}"\nsms_key = "{keys["sms"][0]}"\n'
                     f'admin = ["{keys["alice"][0]}"]\ninvoker = ["{keys["ivan"][0]}"]\n'
                     f'node = ["{keys["node1"][0]}"]\n')
        cfgs[own] = str(f)
    return cfgs


def test_idempotency_key_gives_one_execution_across_sms_restarts_per_caller(tmp_path, marks):
    from spear.config import load_config

    cfgs = _curve(tmp_path)
    sec = {who: load_config(cfgs[who], env={}).security for who in ("alice", "ivan")}
    c = Cluster(tmp_path / "c", spearlets=1, config=cfgs["sms"], spearlet_config=cfgs["node1"],
                client_security=sec["alice"], host_roots=[str(marks)], **FAST_HB)
    try:
        c.start(wait=30)
        with Client(c.sms_addr, timeout=20, security=sec["alice"]) as alice, \
                Client(c.sms_addr, timeout=20, security=sec["ivan"]) as ivan:
            alice.deploy(mark_spec(marks))
            a1 = alice.submit("mark", b"a1", idempotency_key="K-async")
            assert alice.submit("mark", b"a1-again", idempotency_key="K-async") == a1
            s1 = alice.invoke("mark", b"s1", idempotency_key="K-sync")
            assert s1.ok and s1.output == b"s1\n"
            again = alice.invoke("mark", b"s1-again", idempotency_key="K-sync")
            assert again.execution_id == s1.execution_id and again.output == b"s1\n"
            # another caller's key is another scope: the same K is its own execution
            i1 = ivan.submit("mark", b"i1", idempotency_key="K-async")
            assert i1 != a1
            assert alice.wait(a1, timeout=30).ok and ivan.wait(i1, timeout=30).ok

        restart_sms(c)  # stopped, started again on the same store
        with Client(c.sms_addr, timeout=20, security=sec["alice"]) as alice, \
                Client(c.sms_addr, timeout=20, security=sec["ivan"]) as ivan:
            assert alice.submit("mark", b"a1-after", idempotency_key="K-async") == a1
            after = alice.invoke("mark", b"s1-after", idempotency_key="K-sync")
            assert after.execution_id == s1.execution_id and after.ok and after.output == b"s1\n"
            assert ivan.submit("mark", b"i1-after", idempotency_key="K-async") == i1
            r = spear_cli("invoke", "mark", "a1-cli", "--async", "--idempotency-key", "K-async",
                          "--sms", c.sms_addr, "--config", cfgs["alice"])
            assert r.returncode == 0 and r.stdout.strip() == a1, r.stdout + r.stderr
            # the crash case: acknowledged means written, so the key holds
            # even when the SMS dies right after the Accepted
            k3 = alice.submit("mark", b"k3", idempotency_key="K-crash")
        restart_sms(c, kill=True)
        with Client(c.sms_addr, timeout=20, security=sec["alice"]) as alice:
            assert alice.submit("mark", b"k3-after", idempotency_key="K-crash") == k3
            k3_done = alice.wait(k3, timeout=30)
            assert k3_done.status in TERMINAL
            assert alice.submit("mark", b"a1-late", idempotency_key="K-async") == a1
            st = alice.stats()
            assert st.counts["deduplicated"] >= 7, st.counts
    finally:
        c.stop()
    runs = ran(marks)
    assert runs == collections.Counter(["a1", "s1", "i1"] + ["k3"] * runs["k3"])
    assert runs["k3"] == (1 if k3_done.ok else 0), (k3_done.status, k3_done.info.error)
    if not k3_done.ok:  # see crashed_before_its_dispatch_left
        assert crashed_before_its_dispatch_left(k3_done)


# ---------------------------------------------------------------- 6. Spearlet data directory


def test_second_spearlet_in_one_data_directory_refuses_and_a_stale_lock_does_not(tmp_path):
    with Cluster(tmp_path / "c", spearlets=1, **FAST_HB) as c:
        c.start(wait=30)
        first = c.spearlets[0]
        data = c.data / "spearlet-1"
        argv = [sys.executable, "-m", "spear", "spearlet", "--sms", c.sms_addr, "--listen",
                f"tcp://127.0.0.1:{free_port()}", "--name", "second", "--data", str(data)]
        second = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True, start_new_session=True)
        try:
            _, err = second.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            Cluster.stop_process(second)
            raise AssertionError("a second Spearlet started in a data directory in use") from None
        assert second.returncode == 3  # UNAVAILABLE
        lock = data / "spearlet.lock"
        assert str(lock) in err and f"pid {first.pid}" in err and "--data" in err, err
        assert "Traceback" not in err, err
        with Client(c.sms_addr) as cl:
            assert [n.name for n in cl.nodes()] == ["spearlet-1"]

        os.kill(first.pid, signal.SIGKILL)  # leaves spearlet.lock behind, with its pid
        first.wait(10)
        assert lock.read_text().strip() == str(first.pid)
        with Client(c.sms_addr) as cl:
            wait_for(lambda: [n.state for n in cl.nodes()] == ["unhealthy"], 10,
                     "the killed Spearlet unhealthy")
            c.start_spearlet(0)  # the same directory: the stale lock does not block it
            wait_for(lambda: [n.state for n in cl.nodes()] == ["ready"], 15,
                     "the restarted Spearlet ready")
        assert c.spearlets[0].poll() is None
        assert lock.read_text().strip() == str(c.spearlets[0].pid)


# ---------------------------------------------------------------- 7. counts after restarts


def test_counts_add_up_and_sync_ids_resolve_after_sms_restarts(tmp_path, marks):
    with Cluster(tmp_path / "c", spearlets=1, host_roots=[str(marks)], **FAST_HB) as c:
        c.start(wait=30)
        with Client(c.sms_addr, timeout=20) as cl:
            cl.deploy(mark_spec(marks))
            cl.deploy(mark_spec(marks, "slow", delay=1.0))
            cl.deploy(P.FunctionSpec(name="fails", runtime="process", command=["false"]))
            ok = cl.invoke("mark", b"sync-ok")
            bad = cl.invoke("fails")
            assert ok.ok and bad.status == "failed"
        restart_sms(c)
        with Client(c.sms_addr, timeout=20) as cl:
            # a sync invocation is acknowledged by its result: its id resolves later
            assert cl.execution(ok.execution_id).status == "succeeded"
            assert cl.execution(bad.execution_id).status == "failed"
            st = cl.stats()
            assert st.counts["submitted"] == 2 and balanced(st.counts, st.executions_active), st.counts
            # async work in flight when the SMS crashes
            slow = [cl.submit("slow", f"slow{i}".encode()) for i in range(4)]
        restart_sms(c, kill=True)
        with Client(c.sms_addr, timeout=20) as cl:
            ends = {f"slow{i}": cl.wait(e, timeout=30) for i, e in enumerate(slow)}
            st = cl.stats()
            assert st.executions_active == 0
            assert st.counts["submitted"] == 6, st.counts
            assert balanced(st.counts, 0), st.counts
            r = spear_cli("stats", "--json", "--sms", c.sms_addr)
            assert r.returncode == 0, r.stderr
            assert json.loads(r.stdout)["counts"]["submitted"] == 6
    runs = ran(marks)
    assert runs == collections.Counter(["sync-ok", *(t for t, r in ends.items() if r.ok)]), \
        {t: r.status for t, r in ends.items()}
    assert all(r.ok or crashed_before_its_dispatch_left(r) for r in ends.values())
