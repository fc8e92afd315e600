"""Spear Management Service: the node registry, functions, executions and scheduling.

:mod:`spear.sms.core` holds all of it as one pure state machine
(``SMSCore.handle(event, now) -> instructions``: no sockets, no store, no
clock), built from :mod:`.identity`, :mod:`.nodes`, :mod:`.scheduler`,
:mod:`.functions`, :mod:`.executions`, :mod:`.placement`, :mod:`.learned`
(per-function cost models), :mod:`.records`, :mod:`.queries` (filters,
cursors, statistics), :mod:`.spans` and :mod:`.subscriptions`;
:mod:`spear.sms.daemon` is the asyncio driver that owns
the socket, the store and the timers. This package may import
``spear.protocol``, ``errors``, ``config``, ``ids``, ``store``, ``mesh``,
``metrics``, ``fast``, ``tracing`` and ``service`` - never ``spearlet``, ``gateway``,
``cli``, ``runtimes`` or ``bench`` (only ``__main__`` calls the CLI's ``sms``
command, so that ``python -m spear.sms`` and ``spear sms`` are one).
"""
