"""The module-level face: :func:`connect`, :func:`function`, :func:`get`, :func:`wait`."""

from __future__ import annotations

import concurrent.futures

from .functions import RemoteFunction


def connect(address: str | None = None, *, working_dir=None, requirements=(), **client_kwargs):
    """Make the process-wide default connection to the SMS at ``address``.

    ``address`` defaults to ``spear.config.default_sms_address()`` (``SPEAR_SMS``).
    ``working_dir``: a directory packed now (INVALID_ARGUMENT if it is not
    one) and shipped with every function of this connection; modules in it
    are imported on the node from there. ``requirements``: lines such as
    ``"humanize>=4"`` added to every function's own. ``client_kwargs`` go to
    :class:`spear.AsyncClient` (``timeout``, which defaults to 60 s here, and
    ``security``). A previous default connection is closed. Without a call to
    ``connect`` the first ``.remote`` connects to the default address, with no
    working directory. Returns the connection (``close()`` ends it).
    """
    from .connection import Connection, set_default

    return set_default(Connection(address, working_dir=working_dir, requirements=requirements,
                                  **client_kwargs))


def function(fn=None, /, *, memory: int | str | None = None, timeout: float | None = None,
             retries: int = 0, requirements=(), python: str | None = None):
    """Make ``fn`` callable on the cluster: ``@spear.function`` or
    ``@spear.function(memory="256MiB", timeout=30, retries=2, requirements=["humanize"])``.

    ``memory``: MiB as an int or a size like ``"256MiB"``; ``timeout``:
    seconds per call (the node's default when None); ``retries``: how often
    the SMS may run a call again after its node was lost; ``requirements``:
    lines such as ``"humanize>=4"``, resolved to exact versions at the first
    deploy; ``python``: the ``major.minor`` to run on (default: this
    interpreter's, which a function pickled by value needs). Returns a
    :class:`RemoteFunction`.
    """
    def wrap(f):
        return RemoteFunction(f, memory=memory, timeout=timeout, retries=retries,
                              requirements=requirements, python=python)

    return wrap if fn is None else wrap(fn)


def get(futures, timeout: float | None = None):
    """The result of one future, or the list of results of several (in order).

    ``timeout`` bounds the whole wait; the first remote exception is raised.
    """
    if isinstance(futures, concurrent.futures.Future):
        return futures.result(timeout)
    futures = list(futures)
    done, not_done = concurrent.futures.wait(futures, timeout)
    if not_done:
        raise concurrent.futures.TimeoutError(f"{len(not_done)} of {len(futures)} calls unfinished")
    return [f.result() for f in futures]


def wait(futures, timeout: float | None = None, return_when: str = concurrent.futures.ALL_COMPLETED):
    """:func:`concurrent.futures.wait` for remote futures: ``(done, not_done)`` sets.

    ``return_when``: ``"ALL_COMPLETED"``, ``"FIRST_COMPLETED"`` or ``"FIRST_EXCEPTION"``.
    """
    return concurrent.futures.wait(list(futures), timeout, return_when)
