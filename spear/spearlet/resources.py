"""Resource monitor: the node's capacity and current usage, from psutil."""

from __future__ import annotations

import os

import psutil

from ..protocol import Capacity, Usage


class ResourceMonitor:
    """Cheap, non-blocking psutil readings for registration and heartbeats."""

    def __init__(self, disk_path: str = ".", slots: int = 0) -> None:
        self.disk_path = disk_path if os.path.exists(disk_path) else "/"
        self.slots = slots
        psutil.cpu_percent(interval=None)  # prime the counter

    def capacity(self) -> Capacity:
        return Capacity(
            cores=float(psutil.cpu_count(logical=True) or 1),
            memory=psutil.virtual_memory().total,
            disk=psutil.disk_usage(self.disk_path).total,
            slots=self.slots,
        )

    def usage(self, *, running: int = 0, warm: int = 0) -> Usage:
        vm = psutil.virtual_memory()
        du = psutil.disk_usage(self.disk_path)
        try:
            net = psutil.net_io_counters()
            rx, tx = net.bytes_recv, net.bytes_sent
        except (OSError, AttributeError):  # no network counters in some sandboxes
            rx = tx = 0
        try:
            load1 = os.getloadavg()[0]
        except OSError:
            load1 = 0.0
        return Usage(
            cpu_percent=psutil.cpu_percent(interval=None),
            memory_used=vm.total - vm.available,
            memory_total=vm.total,
            disk_used=du.used,
            disk_total=du.total,
            net_rx=rx,
            net_tx=tx,
            load1=load1,
            running=running,
            warm=warm,
        )
