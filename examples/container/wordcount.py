"""A container function: text on stdin -> JSON statistics on stdout.

Runs inside the image built from this directory's Dockerfile (python3 from
spear-test/python). Progress goes to stderr, which Spear streams as logs.
Optional argument: how many top words to report (default 3).
"""

import collections
import json
import re
import sys


def main() -> int:
    top = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    text = sys.stdin.buffer.read().decode("utf-8", "replace")
    words = re.findall(r"[a-z0-9']+", text.lower())
    print(f"wordcount: {len(text)} characters read", file=sys.stderr)
    if not text.strip():
        print("wordcount: empty input", file=sys.stderr)
        return 2
    result = {
        "lines": text.count("\n") + (not text.endswith("\n")),
        "words": len(words),
        "chars": len(text),
        "top": collections.Counter(words).most_common(top),
    }
    json.dump(result, sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
