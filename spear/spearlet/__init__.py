"""Spearlet: the execution node. ``core`` holds its state and rules without
I/O (deployed functions, executions, admission, accounting, results kept
until the SMS confirms them), in the vocabulary of ``events``; ``runner``
drives that core with asyncio (runtimes, instance pools, execution tasks);
``daemon`` wires both to the ROUTER for direct clients and the DEALER link
to the SMS; ``results``, ``pool``, ``resources`` and ``spans`` are their parts.
It may import ``protocol``, ``errors``, ``config``, ``ids``, ``mesh``, ``runtimes``,
``store``, ``metrics``, ``fast`` and the small shared modules ``service``,
``tracing`` and ``fsmodes``; never ``sms``, ``gateway``, ``cli`` or ``bench``
(``__main__`` alone hands ``python -m spear.spearlet`` over to the CLI).
"""
