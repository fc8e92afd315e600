"""The acceptance example of code shipping, verbatim, run as a user would.

A directory that exists only on the user's machine holds ``mylib/text.py``
(importing ``humanize``) and ``driver.py``; the driver runs with this Python
against a real cluster whose Spearlet has seen neither the code nor
``humanize``, and whose functions run as the sandbox user.
"""

from __future__ import annotations

import os
import sys

from spear.client.requirements import this_python

from .conftest import humanize_importable, run_driver

TEXT_PY = '''\
# mylib/text.py
import humanize
def pretty(n):
    return humanize.intcomma(n)
'''

DRIVER_PY = '''\
# driver.py
import spear, mylib.text
spear.connect(working_dir=".")        # address from SPEAR_SMS / the config layers; ships this directory
pretty = spear.function(requirements=["humanize"], timeout=60)(mylib.text.pretty)
assert pretty.remote(1234567).result() == "1,234,567"
assert list(pretty.map(range(1000)))[999] == "999"

@spear.function
def boom():
    raise ValueError("bad input")
boom.remote().result()                # raises ValueError("bad input"), remote traceback attached
'''


def test_the_acceptance_example(tmp_path, cluster, user_site):
    # neither the Spearlet's interpreter nor a system one the sandbox user may run
    for python in (sys.executable, "/usr/bin/python3", f"/usr/bin/python{this_python()}"):
        assert not os.path.exists(python) or not humanize_importable(python), python
    home = tmp_path / "laptop"
    (home / "mylib").mkdir(parents=True)
    (home / "mylib" / "text.py").write_text(TEXT_PY)
    (home / "driver.py").write_text(DRIVER_PY)
    done = run_driver(home, "driver.py", cluster, user_site)
    # the two asserts passed; the last line raised the remote ValueError
    assert done.returncode == 1, done.stderr
    err = done.stderr
    assert err.rstrip().endswith("ValueError: bad input"), err
    assert "AssertionError" not in err
    assert "Remote traceback:" in err
    assert 'raise ValueError("bad input")' in err.split("Remote traceback:", 1)[1]
    assert "driver.py" in err.split("Remote traceback:", 1)[1]
