"""``python -m bench.sim``: trace-driven, event-driven simulators to compare
policies without running a cluster: warm instances (``--warming``) and
placement on the real SMS core (``--policies``).

Warming parts, each replaceable on its own:

* :mod:`.workloads` — the calls: generated traces by name (``zipf``,
  ``bursts``, ``diurnal``; fixed seeds) and Azure Functions 2021 CSV files;
* :mod:`.cluster` — the model: nodes with memory, instances per function,
  one event loop; it asks its policies what to do and keeps the figures;
* :mod:`.policies` — the decisions: instance warming (the REAL
  :mod:`spear.autoscale.warming`), where a function's instances go, how many
  nodes there are;
* :mod:`.report` — one row per (trace, policy): the table and the JSON.

Placement parts:

* :mod:`.jobs` — calls with run time and peak memory, per-function memory
  requests, inputs: generated traces (``skewed``, ``bursty``, ``mixed``,
  ``padded``, ``sized``) and Azure-format files with seeded memory;
* :mod:`.placing` — the REAL :class:`spear.sms.core.SMSCore` fed events on a
  simulated clock, simulated nodes (of types that differ in speed, some
  sharing their cores with a background tenant, all heartbeating their
  load) answering its dispatches; one row per (trace, policy, load);
* :mod:`.plot` — the table and PNG of docs/scheduling.md (matplotlib).

Imports ``spear.autoscale``, ``spear.config`` and the SMS core (pure, no
I/O); never a daemon.
"""
