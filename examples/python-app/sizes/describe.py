"""Functions the driver runs on the cluster; they need ``humanize``, which the
nodes do not have until Spear builds the function's environment."""

import humanize


def describe(n_bytes):
    """``1536`` -> ``"1.5 KiB"``; a negative size is a caller's mistake."""
    if n_bytes < 0:
        raise ValueError(f"a size cannot be negative: {n_bytes}")
    return humanize.naturalsize(n_bytes, binary=True)


def where():
    """The user this function runs as on the node, and whether Spear is there."""
    import importlib.util
    import os
    import pwd

    return {"user": pwd.getpwuid(os.getuid()).pw_name,
            "spear": importlib.util.find_spec("spear") is not None}
