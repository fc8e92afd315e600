"""One-shot command: start a child and a grandchild that sleep, log the pids, sleep.

Usage: tree.py PIDFILE. Every pid is appended to PIDFILE as soon as it exists.
"""

import subprocess
import sys
import time

path = sys.argv[1]
code = (
    "import subprocess, sys, time\n"
    "g = subprocess.Popen(['sleep', '60'])\n"
    "open(sys.argv[1], 'a').write(f'{g.pid}\\n')\n"
    "time.sleep(60)\n"
)
child = subprocess.Popen([sys.executable, "-c", code, path])
with open(path, "a") as f:
    f.write(f"{child.pid}\n")
print("tree: started", file=sys.stderr, flush=True)
time.sleep(60)
