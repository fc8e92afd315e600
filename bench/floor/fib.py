"""A CPU-bound child for the bare parallel-efficiency floor.

The same naive fib as examples/handlers.py. argv: K (how many), ARG. Warms
up, prints ``ready``, waits for a line on stdin, runs fib(ARG) K times,
prints ``done``.
"""

import sys


def fib(n: int) -> int:
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def main(k: int, arg: int) -> None:
    fib(arg)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdin.readline()
    for _ in range(k):
        fib(arg)
    sys.stdout.write("done\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
