#!/usr/bin/env bash
# Bring up a real Docker Engine for Spear's tests and CI, then build the
# local test images (tests/images/build.sh).
#
# * Run as root on a fresh Debian 12 machine (or again: it is idempotent).
# * No systemd is assumed: dockerd is started in the background by this
#   script, its log goes to /var/log/dockerd.log.
# * No container registry is needed: images are built from Debian packages.
#
# Environment knobs:
#   DOCKERD_WAIT     seconds to wait for the engine to answer (default 60)
#   DOCKERD_FLAGS    extra flags for dockerd; when set, only these are tried
#   SPEAR_SKIP_IMAGES=1  do not run tests/images/build.sh
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
LOG=/var/log/dockerd.log
WAIT="${DOCKERD_WAIT:-60}"
START=$(date +%s)

say() { printf '[setup-docker] %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root"

# ------------------------------------------------------------------ packages
need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# ------------------------------------------------------------------ client
# A newer client may already sit in /usr/local/bin; any client that can talk
# to the engine will do, so pick the first one that answers.
pick_client() {
    local c
    for c in "$(command -v docker 2>/dev/null || true)" /usr/bin/docker /usr/local/bin/docker; do
        [ -n "$c" ] && [ -x "$c" ] || continue
        if "$c" info >/dev/null 2>&1; then
            echo "$c"
            return 0
        fi
    done
    return 1
}

# ------------------------------------------------------------------ daemon
engine_up() { pick_client >/dev/null; }

pidfile_pid() { [ -s /var/run/docker.pid ] && cat /var/run/docker.pid; }

alive() {
    # $1: the pid we started (setsid may have forked: then the pid file tells)
    kill -0 "$1" 2>/dev/null && return 0
    local p
    p=$(pidfile_pid) && kill -0 "$p" 2>/dev/null
}

start_dockerd() {
    # $@: dockerd flags. Returns 0 once `docker info` answers.
    local pid i p
    say "starting dockerd $*"
    rm -f /var/run/docker.pid
    {
        echo "===== $(date -Is) dockerd $*"
    } >>"$LOG"
    setsid nohup dockerd "$@" >>"$LOG" 2>&1 </dev/null &
    pid=$!
    for ((i = 0; i < WAIT * 2; i++)); do
        if engine_up; then
            say "dockerd (pid $pid) is up after $((i / 2)) s"
            return 0
        fi
        if ! alive "$pid"; then
            say "dockerd $* exited; last log lines:"
            tail -n 5 "$LOG" >&2 || true
            return 1
        fi
        sleep 0.5
    done
    say "dockerd $* did not answer within ${WAIT}s; stopping it"
    p=$(pidfile_pid) || p=$pid
    kill "$pid" "$p" 2>/dev/null || true
    for ((i = 0; i < 20; i++)); do alive "$pid" || break; sleep 0.5; done
    kill -9 "$pid" "$p" 2>/dev/null || true
    return 1
}

if engine_up; then
    say "Docker Engine already answers"
else
    # A dockerd that is still starting (or wedged) holds the pid file.
    if [ -s /var/run/docker.pid ] && kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
        old=$(cat /var/run/docker.pid)
        say "dockerd pid $old exists but does not answer yet; waiting"
        for ((i = 0; i < WAIT * 2; i++)); do engine_up && break; sleep 0.5; done
        if ! engine_up; then
            say "stopping unresponsive dockerd pid $old"
            kill "$old" 2>/dev/null || true
            sleep 3
            kill -9 "$old" 2>/dev/null || true
        fi
    fi
fi

if ! engine_up; then
    if [ -n "${DOCKERD_FLAGS:-}" ]; then
        # shellcheck disable=SC2086
        candidates=("$DOCKERD_FLAGS")
    else
        # Most capable first; each fallback drops a kernel feature that a
        # sandboxed/minimal kernel may lack (overlayfs, netfilter, bridges).
        candidates=(
            "--storage-driver=overlay2"
            "--storage-driver=overlay2 --iptables=false"
            "--storage-driver=overlay2 --iptables=false --ip-masq=false --bridge=none"
            "--storage-driver=vfs --iptables=false --ip-masq=false --bridge=none"
        )
    fi
    ok=0
    for flags in "${candidates[@]}"; do
        # shellcheck disable=SC2086
        if start_dockerd $flags; then ok=1; break; fi
    done
    [ "$ok" = 1 ] || die "could not start dockerd with any of: ${candidates[*]} (see $LOG)"
fi

DOCKER="$(pick_client)" || die "no docker client can reach the engine"
export DOCKER
driver=$("$DOCKER" info --format '{{.Driver}}' 2>/dev/null || echo '?')
version=$("$DOCKER" version --format '{{.Server.Version}}' 2>/dev/null || echo '?')
say "engine $version, storage driver $driver, client $DOCKER"

# ------------------------------------------------------------------ images
if [ "${SPEAR_SKIP_IMAGES:-0}" != 1 ]; then
    bash "$ROOT/tests/images/build.sh"
fi

say "done in $(($(date +%s) - START)) s"
