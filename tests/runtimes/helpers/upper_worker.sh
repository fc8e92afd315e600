#!/usr/bin/env bash
# A pooled Spear worker in plain bash (protocol: docs/worker-protocol.md).
# It upper-cases its input. Special inputs: "pid" replies with its pid,
# "fail" sends an error reply, "exit" makes it die mid-call (exit code 3).
# Requests arrive on fd 3, replies go to fd 4; stdout is a log stream.
# `dd bs=1` reads byte by byte so it never consumes past the current frame.
set -u
LC_ALL=C

read_u32() {
    local bytes
    bytes=$(dd bs=1 count=4 <&3 2>/dev/null | od -An -tu1)
    set -- $bytes
    [ $# -eq 4 ] || return 1
    echo $(( ($1 << 24) | ($2 << 16) | ($3 << 8) | $4 ))
}

put_byte() { printf "\\$(printf '%03o' $(( $1 & 255 )))"; }

reply() {  # reply STATUS FILE
    local n=$(( $(wc -c < "$2") + 1 ))
    { put_byte $(( n >> 24 )); put_byte $(( n >> 16 )); put_byte $(( n >> 8 )); put_byte $n
      put_byte "$1"; cat "$2"; } >&4
}

body=$(mktemp)
out=$(mktemp)
trap 'rm -f "$body" "$out"' EXIT
: > "$out"
reply 0 "$out"                                   # ready
while size=$(read_u32); do
    hlen=$(read_u32) || exit 0
    [ "$hlen" -gt 0 ] && dd bs=1 count="$hlen" of=/dev/null <&3 2>/dev/null   # JSON header: unused
    dd bs=1 count=$(( size - 4 - hlen )) of="$body" <&3 2>/dev/null
    echo "upper_worker: $(wc -c < "$body") bytes" >&2
    case "$(cat "$body")" in
        pid)  printf '%s' "$$" > "$out"; reply 0 "$out" ;;
        fail) printf 'ShoutError: cannot shout that' > "$out"; reply 1 "$out" ;;
        exit) echo "upper_worker: exiting on request" >&2; exit 3 ;;
        *)    tr 'a-z' 'A-Z' < "$body" > "$out"; reply 0 "$out" ;;
    esac
done
