"""``spear nodes``, ``spear ping``, ``spear stats`` and ``spear events``: the cluster as it is."""

from __future__ import annotations

import argparse
import json
import time

import msgspec

from ._base import EXIT_OK, Command, client_options, make_client
from ._output import fmt_bytes, print_json, print_table


def add_nodes_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``spear nodes``."""
    p.add_argument("node_id", metavar="node", nargs="?", help="node id or name")
    p.add_argument("--state", choices=["ready", "unhealthy", "draining", "gone"])
    client_options(p)


def add_ping_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``spear ping``."""
    p.add_argument("--node", help="a spearlet (address, name or id) instead of the SMS")
    client_options(p)


def add_events_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``spear events``."""
    p.add_argument("--since", type=int, default=0, help="replay events after this sequence number")
    p.add_argument("--count", type=int, default=0, help="stop after this many events")
    p.add_argument("--for", dest="duration", type=float, default=0.0, help="stop after S seconds")
    client_options(p)


def _runtime_states(n) -> str:
    """One line per runtime: available or not (why is printed below the table)."""
    return "\n".join([f"{r}: yes" for r in n.runtimes]
                     + [f"{r}: no" for r in sorted(n.unavailable)]) or "-"


def _print_nodes(nodes) -> None:
    now = time.time()
    rows = []
    for n in nodes:
        u = n.usage
        rows.append([
            n.name, n.node_id, n.state, n.address,
            f"{u.cpu_percent:.0f}% of {n.capacity.cores:g}",
            f"{fmt_bytes(u.memory_used)}/{fmt_bytes(n.capacity.memory)}",
            f"{u.load1:.2f}", u.running, u.warm,
            ",".join(f"{k}={v}" for k, v in n.labels.items()) or "-",
            _runtime_states(n),
            f"{max(0.0, now - n.last_seen):.1f}s ago",
        ])
    print_table(f"{len(nodes)} node(s)",
                ["name", "id", "state", "address", "cpu", "memory", "load", "running", "warm",
                 "labels", "runtimes", "heartbeat"], rows)
    off = [(n.name, r, why) for n in nodes for r, why in sorted(n.unavailable.items())]
    if off:
        print("runtimes not available:")
        for name, r, why in off:
            print(f"  {name} {r}: {why if len(nodes) == 1 else why[:200]}")


#: the label naming who started a node (the autoscaler sets ``spear.owner=autoscaler``)
OWNER_LABEL = "spear.owner"


def _with_owner(node) -> dict:
    """A node's JSON record plus ``owner``: who started it ("" when nobody said)."""
    return {**msgspec.to_builtins(node), "owner": node.labels.get(OWNER_LABEL, "")}


def cmd_nodes(args) -> int:
    """List the nodes (or show one)."""
    with make_client(args) as c:
        nodes = [c.node(args.node_id)] if args.node_id else c.nodes(args.state)
    if args.json:
        records = [_with_owner(n) for n in nodes]
        print_json(records[0] if args.node_id else records)
    else:
        _print_nodes(nodes)
    return EXIT_OK


def cmd_ping(args) -> int:
    """Check that the SMS (or a Spearlet) answers, and how fast."""
    with make_client(args) as c:
        t0 = time.perf_counter()
        pong = c.ping(node=args.node)
        dt = time.perf_counter() - t0
    if args.json:
        print_json({"role": pong.role, "node_id": pong.node_id, "version": pong.version, "rtt": dt})
    else:
        print(f"{pong.role} {pong.node_id} version {pong.version}: {dt * 1e3:.2f} ms")
    return EXIT_OK


def cmd_stats(args) -> int:
    """Cluster resources, reservations and execution counts: aligned lines, or JSON."""
    with make_client(args) as c:
        st = c.stats()
    if args.json:
        print_json(st)
        return EXIT_OK
    lines = [
        ("nodes ready", str(st.nodes_ready)),
        ("cores", f"{st.cores_reserved:g} reserved of {st.cores_total:g}"),
        ("memory", f"{fmt_bytes(st.memory_reserved)} reserved of {fmt_bytes(st.memory_total)}"),
        ("executions active", str(st.executions_active)),
        ("executions queued", str(st.queued)),  # waiting for a node with room
    ]
    lines += [(f"executions {status}", str(n)) for status, n in sorted(st.counts.items())]
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"{key:<{width}}  {value}")
    return EXIT_OK


def cmd_events(args) -> int:
    """Print node and execution events as they come (one JSON line each with ``--json``)."""
    deadline = time.monotonic() + args.duration if args.duration else None
    with make_client(args) as c:
        n = 0
        for ev in c.events(since=args.since, until=deadline):
            n += 1
            if args.json:
                print(json.dumps(msgspec.to_builtins(ev)), flush=True)
            else:
                print(f"{ev.seq:>8} {ev.kind:<9} {ev.key:<34} {ev.state:<10} {ev.detail}", flush=True)
            if args.count and n >= args.count:
                break
    return EXIT_OK


COMMANDS = {
    "nodes": Command(add_nodes_arguments, cmd_nodes),
    "ping": Command(add_ping_arguments, cmd_ping),
    "stats": Command(client_options, cmd_stats),
    "events": Command(add_events_arguments, cmd_events),
}
