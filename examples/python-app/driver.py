"""Run the functions of ``sizes`` on a Spear cluster (address from SPEAR_SMS).

    python driver.py

This directory is packed and shipped with every function; the nodes build an
environment with requirements.txt on the first call and import ``sizes``
from the shipped copy.
"""

import concurrent.futures
import os

import spear
from spear.client.requirements import read_file

from sizes import describe as local

HERE = os.path.dirname(os.path.abspath(__file__))

spear.connect(working_dir=HERE, requirements=read_file(os.path.join(HERE, "requirements.txt")))
describe = spear.function(timeout=60)(local.describe)
where = spear.function(local.where)


def main():
    print("runs on the node as:", where.remote().result())

    # eight threads, each with its own calls in flight
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        sizes = list(pool.map(lambda n: describe.remote(n << 10).result(), range(8)))
    print("8 threads:", sizes)

    # a thousand inputs, streamed back in order with a bounded number in flight
    described = list(describe.map(range(1000)))
    print("map over 1000:", described[0], "...", described[999])

    # a remote exception comes back as itself, with the remote traceback
    try:
        describe.remote(-1).result()
    except ValueError as exc:
        print("remote error:", exc)
        print("\n".join(exc.__notes__))


if __name__ == "__main__":
    main()
