"""An embedded cluster of real daemons on loopback (``spear up``, demo, tests, bench).

Each daemon is a subprocess started with ``sys.executable -m spear ...`` so it
behaves exactly like one an operator starts by hand.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from . import errors
from .config import child_env
from .fsmodes import private_dir, private_opener


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Can host:port be bound right now?

    With SO_REUSEADDR, as libzmq binds: a connection of ours lingering in
    TIME_WAIT on that port does not stop a daemon from listening there, so it
    must not count as taken here either; a listening socket does.
    """
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class Cluster:
    """SMS + N Spearlets as subprocesses; a context manager that always cleans up."""

    def __init__(
        self,
        data: str | Path,
        *,
        spearlets: int = 2,
        sms_port: int | None = None,
        store: str = "leveldb",
        config: str | None = None,
        heartbeat_interval: float | None = None,
        heartbeat_timeout: float | None = None,
        cleanup_interval: float | None = None,
        log_level: str | None = "info",
        log_format: str | None = None,
        env: dict | None = None,
        quiet: bool = True,
        labels: list[str] | None = None,
        spearlet_config: str | None = None,
        client_security=None,
        gateway: str | None = None,
        host_roots: list[str] | None = None,
        autoscaler: bool = False,
    ) -> None:
        self.data = Path(data)
        self.n = spearlets
        self.sms_port = sms_port or free_port()
        self.sms_addr = f"tcp://127.0.0.1:{self.sms_port}"
        self.store = store
        self.config = config
        self.spearlet_config = spearlet_config or config
        #: credentials the cluster's own readiness checks use when CURVE is on
        self.client_security = client_security
        self.hb = (heartbeat_interval, heartbeat_timeout, cleanup_interval)
        #: the daemons' --log-level/--log-format (None: as their configuration says)
        self.log_level = log_level
        self.log_format = log_format
        self.env = child_env(env)
        self.quiet = quiet
        self.labels = labels or []
        #: HOST:PORT of an HTTP gateway to start with the cluster (None: none)
        self.gateway = gateway
        self.gateway_proc: subprocess.Popen | None = None
        #: host directories the spearlets let functions reach ("PATH" or "PATH:rw");
        #: None: as their configuration says (none by default)
        self.host_roots = host_roots
        #: run ``spear autoscaler`` beside the SMS (its settings: ``config``'s [autoscaler])
        self.autoscaler = autoscaler
        self.autoscaler_proc: subprocess.Popen | None = None
        self.sms: subprocess.Popen | None = None
        self.spearlets: list[subprocess.Popen] = []
        self.spearlet_addrs: list[str] = []
        self._logs: list = []

    # ---------------------------------------------------------------- processes

    def _spawn(self, args: list[str], log_name: str, config: str | None = None) -> subprocess.Popen:
        # logs carry function names and output: 0700/0600 like every data directory
        private_dir(self.data, what="cluster data")
        out = open(self.data / f"{log_name}.log", "ab", opener=private_opener)
        self._logs.append(out)
        # -P: the daemons import the installed spear, never a same-named
        # directory in the current working directory (Python >= 3.11)
        safe = ["-P"] if sys.version_info >= (3, 11) else []
        cmd = [sys.executable, *safe, "-m", "spear"]
        if self.log_level:
            cmd += ["--log-level", self.log_level]
        if self.log_format:
            cmd += ["--log-format", self.log_format]
        cmd += args
        config = config or self.config
        if config:
            cmd += ["--config", config]
        return subprocess.Popen(
            cmd,
            stdout=out if self.quiet else None,
            stderr=out if self.quiet else None,
            env=self.env,
            start_new_session=True,
        )

    def start_sms(self) -> subprocess.Popen:
        args = ["sms", "--listen", self.sms_addr, "--data", str(self.data / "sms"), "--store", self.store]
        hi, ht, ci = self.hb
        if hi is not None:
            args += ["--heartbeat-interval", str(hi)]
        if ht is not None:
            args += ["--heartbeat-timeout", str(ht)]
        if ci is not None:
            args += ["--cleanup-interval", str(ci)]
        self.sms = self._spawn(args, "sms")
        return self.sms

    def start_spearlet(self, i: int, port: int | None = None) -> subprocess.Popen:
        if i < len(self.spearlet_addrs):
            addr = self.spearlet_addrs[i]
        else:
            addr = f"tcp://127.0.0.1:{port or free_port()}"
            self.spearlet_addrs.append(addr)
        args = ["spearlet", "--sms", self.sms_addr, "--listen", addr, "--name", f"spearlet-{i + 1}",
                "--data", str(self.data / f"spearlet-{i + 1}")]
        if i < len(self.labels) and self.labels[i]:
            args += ["--labels", self.labels[i]]
        for root in self.host_roots or ():
            args += ["--host-root", root]
        if self.host_roots:  # the other nodes' and the SMS's data: never a function's
            args += ["--private-path", str(self.data.resolve())]
        p = self._spawn(args, f"spearlet-{i + 1}", self.spearlet_config)
        if i < len(self.spearlets):
            self.spearlets[i] = p
        else:
            self.spearlets.append(p)
        return p

    def check_ports(self) -> None:
        """Raise Unavailable naming the port if the SMS's or the gateway's is taken.

        Checked before anything starts: a daemon that cannot bind exits, but until
        it does, whatever holds its port (another cluster) could answer for it.
        """
        wanted = [("SMS", "127.0.0.1", self.sms_port)]
        if self.gateway:
            host, _, port = self.gateway.rpartition(":")
            wanted.append(("gateway", host or "127.0.0.1", int(port)))
        for what, host, port in wanted:
            if not port_free(port, host):
                raise errors.Unavailable(f"port {port} on {host} ({what}) is taken: "
                                         "stop what uses it or choose another port")

    def check_started(self) -> None:
        """Raise Unavailable if a daemon this cluster started has exited (its log named)."""
        self._check_alive()
        for i, p in enumerate(self.spearlets):
            if p.poll() is not None:
                raise errors.Unavailable(f"spearlet-{i + 1} ({self.spearlet_addrs[i]}) exited with "
                                         f"{p.returncode} (log {self.data}/spearlet-{i + 1}.log)")
        if self.gateway_proc is not None and self.gateway_proc.poll() is not None:
            raise errors.Unavailable(f"gateway ({self.gateway}) exited with "
                                     f"{self.gateway_proc.returncode} (log {self.data}/gateway.log)")
        if self.autoscaler_proc is not None and self.autoscaler_proc.poll() is not None:
            raise errors.Unavailable(f"autoscaler exited with {self.autoscaler_proc.returncode} "
                                     f"(log {self.data}/autoscaler.log)")

    def start(self, *, wait: float = 30.0, first_spearlet_port: int | None = None) -> "Cluster":
        """Start every daemon; with ``wait``, return once all are up (Unavailable if one is
        not). Whatever fails, nothing this call started is left running."""
        try:
            return self._start(wait, first_spearlet_port)
        except BaseException:
            self.stop()
            raise

    def _start(self, wait: float, first_spearlet_port: int | None) -> "Cluster":
        self.check_ports()
        self.start_sms()
        for i in range(self.n):
            port = first_spearlet_port + i if first_spearlet_port else None
            if port is not None and not port_free(port):
                port = None  # taken: any free port will do
            self.start_spearlet(i, port)
        if self.gateway:
            self.gateway_proc = self._spawn(["gateway", "--sms", self.sms_addr, "--http", self.gateway],
                                            "gateway")
        if wait:
            self.wait_ready(self.n, timeout=wait)
            if self.gateway:
                from .gateway import wait_healthy

                wait_healthy(f"http://{self.gateway}", proc=self.gateway_proc)
            self.start_autoscaler()
            self.check_started()
        return self

    def start_autoscaler(self) -> None:
        """Start ``spear autoscaler`` if asked for, once the cluster's own nodes are up
        (started earlier, it would count them missing and start nodes in their place)."""
        if self.autoscaler and self.autoscaler_proc is None:
            self.autoscaler_proc = self._spawn(
                ["autoscaler", "--sms", self.sms_addr, "--data", str(self.data / "autoscaler")],
                "autoscaler")

    def wait_ready(self, count: int, *, timeout: float = 30.0) -> list:
        """Block until ``count`` nodes are ready; raise DeadlineExceeded otherwise."""
        from .client import Client

        deadline = time.monotonic() + timeout
        last: list = []
        # a client that connects before the SMS listens is refused and retries only
        # a reconnect interval later: wait until the port is bound (without
        # connecting to it), then connect once
        while port_free(self.sms_port) and time.monotonic() < deadline:
            self._check_alive()
            time.sleep(0.005)
        with Client(self.sms_addr, timeout=1.0, security=self.client_security) as c:
            while time.monotonic() < deadline:
                self._check_alive()
                try:
                    last = c.nodes("ready")
                    if len(last) >= count:
                        return last
                except errors.DeadlineExceeded:
                    pass
                # a poll is one small request, and up to a nap's length is added to
                # every start (``spear up``, the bench's start to first result)
                time.sleep(0.01)
        raise errors.DeadlineExceeded(
            f"only {len(last)} of {count} nodes ready after {timeout}s (logs in {self.data})")

    def _check_alive(self) -> None:
        if self.sms is not None and self.sms.poll() is not None:
            raise errors.Unavailable(f"SMS exited with {self.sms.returncode} (log {self.data}/sms.log)")

    @staticmethod
    def stop_process(p: subprocess.Popen | None, *, sig=signal.SIGTERM, timeout: float = 10.0) -> int | None:
        """Signal a daemon, wait for it, kill it if it does not go."""
        if p is None or p.poll() is not None:
            return None if p is None else p.returncode
        try:
            p.send_signal(sig)
            return p.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return p.wait(5)

    def stop(self) -> None:
        # first: it stops the nodes it started, which may take each one's drain
        self.stop_process(self.autoscaler_proc, timeout=60.0)
        self.stop_process(self.gateway_proc)
        for p in self.spearlets:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.spearlets:
            self.stop_process(p)
        self.stop_process(self.sms)
        for f in self._logs:
            f.close()
        self._logs.clear()

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def has_autoscaler(config: str | None) -> bool:
    """Does the configuration (file or environment) set anything in ``[autoscaler]``?"""
    from .config import load_config

    _, origin = load_config(config, with_origin=True)
    return any(key.startswith("autoscaler.") for key in origin)


def run_up(args) -> int:
    """``spear up``: run the embedded cluster until Ctrl-C or SIGTERM.

    "ready" is printed only once every daemon is up and bound; when one is not
    (a taken port, say) the error names it, whatever started is stopped, and
    the exit code is 1.
    """
    t0 = time.perf_counter()
    cluster = Cluster(args.data, spearlets=args.spearlets, sms_port=args.port, store=args.store,
                      config=args.config, quiet=False,
                      log_level=args.log_level, log_format=args.log_format,
                      gateway=None if args.no_gateway else args.http,
                      host_roots=getattr(args, "host_root", None),
                      autoscaler=has_autoscaler(args.config))
    stopping = []

    def on_signal(signum, frame):
        stopping.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        cluster.start(wait=0, first_spearlet_port=args.port + 1)
        nodes = cluster.wait_ready(args.spearlets, timeout=30)
        cluster.start_autoscaler()
        if cluster.gateway:
            from .gateway import wait_healthy

            wait_healthy(f"http://{cluster.gateway}", proc=cluster.gateway_proc)
        cluster.check_started()
        print(f"spear up: SMS {cluster.sms_addr}, {len(nodes)} spearlet(s) ready in "
              f"{time.perf_counter() - t0:.2f}s; data in {args.data}. Ctrl-C stops.", flush=True)
        if cluster.autoscaler:
            print(f"  autoscaler on: nodes it starts are under {args.data}/autoscaler", flush=True)
        if cluster.gateway:
            print(f"  admin http://{cluster.gateway}/admin, API docs http://{cluster.gateway}/docs",
                  flush=True)
        print(f"  try: spear nodes --sms {cluster.sms_addr}", flush=True)
        while True:
            cluster._check_alive()
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    except errors.SpearError as exc:
        print(f"spear up: {exc.code}: {exc.message}", file=sys.stderr)
        cluster.stop()
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    cluster.stop()
    print("spear up: stopped", flush=True)
    return 0
