"""A private test subnet of "hosts" on one machine, and Spear daemons on them.

:class:`NetLab` builds, with ``ip`` from iproute2 (root needed)::

     root namespace (pytest, clients)            netns <tag>-sms   10.213.N.1
       smh<rid> 10.213.N.254 ──┐                  netns <tag>-h1    10.213.N.2
                               │   netns <tag>-br netns <tag>-h2    10.213.N.3
                               └── br0 ──── v-sms, v-h1, v-h2 ... (veth pairs)

* every host is a network namespace with one veth ``eth0`` whose peer
  ``v-<host>`` is a port of the bridge ``br0``, which lives in its own
  namespace (nothing is bridged in the root namespace);
* the root namespace gets one veth (``smh<rid>``, 10.213.N.254/24) into the
  bridge so the test process can act as a client;
* ``N`` is picked at random among /24s that no interface of the root
  namespace uses, and names carry the creating pid and a random id, so runs
  in parallel do not clash; :meth:`NetLab.close` removes everything, and a
  later run removes leftovers of runs whose process died.

Only these addresses and loopback are used. :class:`MultiHost` runs an SMS
and Spearlets in the namespaces (``ip netns exec NS python -m spear ...``)
and injects the faults: SIGKILL, link cut and heal, restarts.
"""

from __future__ import annotations

import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

PREFIX = "spear-mh"
SUBNET = "10.213"
SMS_PORT = 7700
NODE_PORT = 7701
REPO = Path(__file__).resolve().parents[2]


class LabUnavailable(RuntimeError):
    """This machine cannot build the lab (not root, no iproute2, no netns)."""


def _ip(*args: str, check: bool = True, timeout: float = 10.0) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def lab_problem() -> str | None:
    """Why a lab cannot be built here, or None if it can."""
    if os.geteuid() != 0:
        return "multi-host tests need root (network namespaces and veth pairs)"
    if shutil.which("ip") is None:
        return "multi-host tests need iproute2 (`ip`): apt-get install iproute2"
    probe = f"{PREFIX}-probe-{os.getpid()}-{secrets.token_hex(2)}"
    try:
        r = _ip("netns", "add", probe, check=False)
        if r.returncode != 0:
            return f"`ip netns add` does not work here: {r.stderr.strip()}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`ip netns` does not work here: {exc}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_leftovers() -> list[str]:
    """Delete namespaces of earlier runs whose creating process is gone."""
    removed = []
    r = _ip("netns", "list", check=False)
    for line in r.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.match(rf"^{re.escape(PREFIX)}-(\d+)-[0-9a-f]+-", name)
        if m and not _pid_alive(int(m.group(1))):
            _ip("netns", "del", name, check=False)
            removed.append(name)
    return removed


def _used_subnets() -> set[int]:
    used = set()
    for args in (("-4", "-o", "addr", "show"), ("-4", "route", "show", "table", "all")):
        out = _ip(*args, check=False).stdout
        used.update(int(m) for m in re.findall(rf"\b{re.escape(SUBNET)}\.(\d+)\.", out))
    return used


class NetLab:
    """Network namespaces on one bridge: a private subnet of test hosts."""

    def __init__(self, hosts: list[str]) -> None:
        for h in hosts:
            if not re.fullmatch(r"[a-z][a-z0-9]{0,9}", h):
                raise ValueError(f"host name {h!r}: 1-10 lower-case letters/digits")
        self.hosts = list(hosts)
        self.rid = secrets.token_hex(3)
        self.tag = f"{PREFIX}-{os.getpid()}-{self.rid}"
        self.ns = {h: f"{self.tag}-{h}" for h in hosts}
        self.br_ns = f"{self.tag}-br"
        self.root_if = f"smh{self.rid}"
        self.octet = 0
        self.ip: dict[str, str] = {}
        self.client_ip = ""
        self.cut: set[str] = set()
        self._made: list[str] = []  # namespaces created, for close()
        self._root_if_made = False

    # ---------------------------------------------------------------- build

    def up(self) -> "NetLab":
        sweep_leftovers()
        used = _used_subnets()
        free = [n for n in range(20, 250) if n not in used]
        if not free:
            raise LabUnavailable(f"no free {SUBNET}.N.0/24 subnet")
        self.octet = random.choice(free)
        base = f"{SUBNET}.{self.octet}"
        self.ip = {h: f"{base}.{i + 1}" for i, h in enumerate(self.hosts)}
        self.client_ip = f"{base}.254"
        try:
            self._add_ns(self.br_ns)
            _ip("-n", self.br_ns, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.br_ns, "link", "set", "br0", "up")
            for h in self.hosts:
                ns = self.ns[h]
                self._add_ns(ns)
                _ip("link", "add", "eth0", "netns", ns, "type", "veth",
                    "peer", "name", f"v-{h}", "netns", self.br_ns)
                _ip("-n", self.br_ns, "link", "set", f"v-{h}", "master", "br0")
                _ip("-n", self.br_ns, "link", "set", f"v-{h}", "up")
                _ip("-n", ns, "addr", "add", f"{self.ip[h]}/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("link", "add", self.root_if, "type", "veth", "peer", "name", "v-client",
                "netns", self.br_ns)
            self._root_if_made = True
            _ip("-n", self.br_ns, "link", "set", "v-client", "master", "br0")
            _ip("-n", self.br_ns, "link", "set", "v-client", "up")
            _ip("addr", "add", f"{self.client_ip}/24", "dev", self.root_if)
            _ip("link", "set", self.root_if, "up")
            self.wait_reachable()
        except BaseException:
            self.close()
            raise
        return self

    def _add_ns(self, ns: str) -> None:
        _ip("netns", "add", ns)
        self._made.append(ns)
        _ip("-n", ns, "link", "set", "lo", "up")

    def wait_reachable(self, timeout: float = 10.0) -> None:
        """Until every veth has carrier (the bridge has no STP: ports forward at once)."""
        deadline = time.monotonic() + timeout
        links = [(ns, "eth0") for ns in self.ns.values()] + [(None, self.root_if)]
        while links and time.monotonic() < deadline:
            for ns, dev in list(links):
                args = ("-n", ns) if ns else ()
                out = _ip(*args, "-o", "link", "show", dev, check=False).stdout
                if "LOWER_UP" in out:
                    links.remove((ns, dev))
            if links:
                time.sleep(0.02)
        if links:
            raise RuntimeError(f"lab links without carrier after {timeout}s: {links}")

    def close(self) -> None:
        """Remove every namespace and link this lab made (processes must be gone)."""
        if self._root_if_made:
            _ip("link", "del", self.root_if, check=False)
            self._root_if_made = False
        for ns in reversed(self._made):
            _ip("netns", "del", ns, check=False)
        self._made.clear()

    def leftovers(self) -> list[str]:
        """Namespaces or links of this lab still present (empty after close())."""
        names = _ip("netns", "list", check=False).stdout
        left = [ns for ns in [self.br_ns, *self.ns.values()] if ns in names]
        if _ip("link", "show", self.root_if, check=False).returncode == 0:
            left.append(self.root_if)
        return left

    # ---------------------------------------------------------------- faults

    def cut_link(self, host: str, where: str = "switch") -> None:
        """Cut ``host`` off: its switch port down (a pulled cable: packets vanish)
        or, ``where="host"``, its own ``eth0`` down (the host sees its link go)."""
        if where == "switch":
            _ip("-n", self.br_ns, "link", "set", f"v-{host}", "down")
        else:
            _ip("-n", self.ns[host], "link", "set", "eth0", "down")
        self.cut.add(host)

    def heal_link(self, host: str) -> None:
        _ip("-n", self.br_ns, "link", "set", f"v-{host}", "up")
        _ip("-n", self.ns[host], "link", "set", "eth0", "up")
        # a downed eth0 loses its connected route; make sure it is back
        self.cut.discard(host)

    def exec_prefix(self, host: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns[host]]

    def __enter__(self) -> "NetLab":
        return self.up()

    def __exit__(self, *exc) -> None:
        self.close()


# -------------------------------------------------------------------- daemons

SPEARLET_TOML = """\
[spearlet]
max_concurrency = {max_concurrency}
drain_timeout = 2.0
reconnect_max = 0.5
# the Python handlers' workdir
host_roots = ["{examples}"]

[runtimes.docker]
enabled = false
"""


class MultiHost:
    """An SMS on host ``sms`` and Spearlets on the other hosts of a :class:`NetLab`.

    Every daemon is ``ip netns exec <ns> python -m spear ...`` in a session of
    its own (so a kill takes its function processes too, like a host dying).
    Logs and state go under ``data``; node ids persist in each Spearlet's data
    dir, so a restart keeps its identity.
    """

    def __init__(self, lab: NetLab, data: Path, *, heartbeat_interval: float = 0.2,
                 heartbeat_timeout: float = 1.0, cleanup_interval: float = 60.0,
                 max_concurrency: int = 64, log_level: str = "info") -> None:
        self.lab = lab
        self.data = Path(data)
        self.data.mkdir(parents=True, exist_ok=True)
        self.hb = (heartbeat_interval, heartbeat_timeout, cleanup_interval)
        self.log_level = log_level
        self.sms_addr = f"tcp://{lab.ip['sms']}:{SMS_PORT}"
        self.config = self.data / "spearlet.toml"
        self.config.write_text(SPEARLET_TOML.format(max_concurrency=max_concurrency,
                                                     examples=REPO / "examples"))
        self.procs: dict[str, subprocess.Popen] = {}
        self._logs: list = []

    def addr(self, host: str) -> str:
        return f"tcp://{self.lab.ip[host]}:{NODE_PORT}"

    @property
    def spearlet_hosts(self) -> list[str]:
        return [h for h in self.lab.hosts if h != "sms"]

    def _spawn(self, host: str, args: list[str]) -> subprocess.Popen:
        out = open(self.data / f"{host}.log", "ab")
        self._logs.append(out)
        cmd = [*self.lab.exec_prefix(host), sys.executable, "-m", "spear",
               "--log-level", self.log_level, *args]
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPEAR_")}
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(REPO),
                             start_new_session=True)
        self.procs[host] = p
        return p

    def start_sms(self) -> subprocess.Popen:
        hi, ht, ci = self.hb
        return self._spawn("sms", [
            "sms", "--listen", self.sms_addr, "--data", str(self.data / "sms"),
            "--store", "leveldb", "--heartbeat-interval", str(hi),
            "--heartbeat-timeout", str(ht), "--cleanup-interval", str(ci)])

    def start_spearlet(self, host: str) -> subprocess.Popen:
        return self._spawn(host, [
            "spearlet", "--sms", self.sms_addr, "--listen", self.addr(host),
            "--advertise", self.addr(host), "--name", host, "--labels", f"host={host}",
            "--data", str(self.data / host), "--config", str(self.config)])

    def start(self, timeout: float = 30.0) -> "MultiHost":
        self.start_sms()
        for h in self.spearlet_hosts:
            self.start_spearlet(h)
        self.wait_ready(self.spearlet_hosts, timeout=timeout)
        return self

    def alive(self, host: str) -> bool:
        p = self.procs.get(host)
        return p is not None and p.poll() is None

    def ns_pids(self, host: str) -> list[int]:
        """Every process in the host's namespace (the daemon and its functions)."""
        r = _ip("netns", "pids", self.lab.ns[host], check=False)
        return [int(x) for x in r.stdout.split() if x.isdigit()]

    def kill(self, host: str, sig: int = signal.SIGKILL, timeout: float = 10.0) -> int | None:
        """Signal the daemon; SIGKILL takes every process of its host (the host died,
        its functions with it)."""
        p = self.procs.get(host)
        if p is None:
            return None
        if sig == signal.SIGKILL:
            for pid in self.ns_pids(host):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        elif p.poll() is None:
            p.send_signal(sig)
        try:
            return p.wait(timeout)
        except subprocess.TimeoutExpired:
            for pid in self.ns_pids(host):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            return p.wait(5)

    def node_id(self, host: str) -> str:
        return (self.data / host / "node_id").read_text().strip()

    def client(self, timeout: float = 10.0):
        from spear import Client

        return Client(self.sms_addr, timeout=timeout)

    def ready_hosts(self, c) -> set[str]:
        from spear import errors

        try:
            return {n.name for n in c.nodes("ready", timeout=2.0)}
        except (errors.DeadlineExceeded, errors.Unavailable):
            return set()

    def wait_ready(self, hosts, timeout: float = 30.0) -> None:
        hosts = set(hosts)
        deadline = time.monotonic() + timeout
        got: set[str] = set()
        with self.client(timeout=2.0) as c:
            while time.monotonic() < deadline:
                for h, p in self.procs.items():
                    if p.poll() is not None and (h == "sms" or h in hosts):
                        raise RuntimeError(f"{h} exited with {p.returncode}:\n{self.log_tail(h)}")
                got = self.ready_hosts(c)
                if hosts <= got:
                    return
                time.sleep(0.05)
        raise AssertionError(f"hosts {sorted(hosts - got)} not ready after {timeout}s "
                             f"(ready: {sorted(got)})\n{self.log_tail('sms')}")

    def log_tail(self, host: str, lines: int = 30) -> str:
        try:
            text = (self.data / f"{host}.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(f"  [{host}] {line}" for line in text[-lines:])

    def stop(self) -> None:
        """Stop every daemon (SIGTERM, then SIGKILL of the session); never raises."""
        # Spearlets first (they deregister from the SMS), then the SMS
        order = [h for h in self.procs if h != "sms"] + [h for h in self.procs if h == "sms"]
        for group in (order[:-1] if order and order[-1] == "sms" else order,
                      ["sms"] if "sms" in self.procs else []):
            for h in group:
                p = self.procs[h]
                if p.poll() is None:
                    try:
                        p.send_signal(signal.SIGTERM)
                    except ProcessLookupError:
                        pass
            deadline = time.monotonic() + 8.0
            for h in group:
                try:
                    self.procs[h].wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        for h in self.procs:  # whatever is left in a host: its daemon or function processes
            for pid in self.ns_pids(h):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for p in self.procs.values():
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
        for f in self._logs:
            f.close()
        self._logs.clear()
