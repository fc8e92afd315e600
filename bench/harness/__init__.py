"""The performance harness behind ``python -m bench``: Spear's figures against a bare-pyzmq floor.

It may import :mod:`spear` (public API, :mod:`spear.cluster`,
:mod:`spear.fast`) and the floor's wire (``bench/floor/floor_wire.py``);
nothing in :mod:`spear` imports it. The child programs it starts are real
files run with ``sys.executable``: ``bench/floor/`` (echo server, broker,
worker, pipe echo, fib: pyzmq + msgspec only, no Spear code) and
``bench/functions/`` (functions it deploys).

One run starts everything it needs on loopback (127.0.0.1, random free
ports), measures, prints a table and writes the same figures as JSON. Every
figure that has a floor is a ratio to that floor measured in the same run,
because these machines are shared and noisy. Modules, in the order a run
uses them: :mod:`.plan` (sections, counts), :mod:`.kernels` (``scheduler``,
``pool``: ``spear.fast`` compiled kernels against their twins),
:mod:`.floor` (``floor``: the bare servers' client; 2-hop echo and 3-hop
broker round trips, p50/p99 and pipelined, 64 KiB / 1 MiB / 16 MiB echoes; bare processes and
bare wasmtime for their rows), :mod:`.session` (the embedded cluster,
``rss``, ``startup``), :mod:`.latency`, :mod:`.throughput`,
:mod:`.runtimes` (``cold``, ``docker``), :mod:`.parallel`,
:mod:`.profile` (``--profile``: py-spy), :mod:`.report` (table, JSON) and
:mod:`.main` (flags, order). Floor and Spear trials alternate and the best of
each counts, so a burst of noise from other tenants does not make one side
look better. Spear's side runs with the spearlet's ``max_concurrency`` raised
to 4096 (default 64), or a window of hundreds in flight would be refused;
every other setting is the default.
"""
