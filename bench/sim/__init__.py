"""``python -m bench.sim``: a trace-driven, event-driven simulator of warm
instances on a cluster, to compare policies without running one.

Parts, each replaceable on its own (placement policies come next):

* :mod:`.workloads` — the calls: generated traces by name (``zipf``,
  ``bursts``, ``diurnal``; fixed seeds) and Azure Functions 2021 CSV files;
* :mod:`.cluster` — the model: nodes with memory, instances per function,
  one event loop; it asks its policies what to do and keeps the figures;
* :mod:`.policies` — the decisions: instance warming (the REAL
  :mod:`spear.autoscale.warming`), where a function's instances go, how many
  nodes there are;
* :mod:`.report` — one row per (trace, policy): the table and the JSON.

Imports ``spear.autoscale`` only; never the services.
"""
