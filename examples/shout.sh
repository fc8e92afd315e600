#!/bin/sh
# One-shot command for the process runtime: upper-cases stdin to stdout.
# Deploy with command=["/path/to/examples/shout.sh"] (mode "oneshot").
echo "shout: shouting" >&2
exec tr '[:lower:]' '[:upper:]'
