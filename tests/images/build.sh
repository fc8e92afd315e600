#!/usr/bin/env bash
# Build Spear's local test images with `docker import`, from root filesystems
# made of Debian packages -- no container registry is contacted.
#
#   spear-test/busybox:latest  /bin/busybox (busybox-static) + applet symlinks
#                              (sh, cat, tr, sleep, head, dd, ...): ~2 MB
#   spear-test/python:latest   debootstrap --variant=minbase of the host's
#                              Debian suite plus python3: ~110 MB
#
# An image that already exists is kept (delete it, or set SPEAR_REBUILD=1, to
# rebuild). Needs root, busybox-static and debootstrap (.ci/setup-docker.sh
# installs them). Environment knobs:
#   DOCKER          docker client to use (default: `docker` in PATH)
#   SPEAR_MIRROR    Debian mirror (default: first URIs of /etc/apt sources)
#   SPEAR_SUITE     Debian suite (default: VERSION_CODENAME of /etc/os-release)
#   SPEAR_REBUILD=1 rebuild even if the images exist
set -euo pipefail

DOCKER="${DOCKER:-docker}"
BUSYBOX_IMAGE=spear-test/busybox:latest
PYTHON_IMAGE=spear-test/python:latest
PATH_ENV="PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

say() { printf '[images] %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

"$DOCKER" info >/dev/null 2>&1 || die "docker client '$DOCKER' cannot reach the engine"

exists() { [ "${SPEAR_REBUILD:-0}" != 1 ] && "$DOCKER" image inspect "$1" >/dev/null 2>&1; }

WORK="$(mktemp -d /tmp/spear-images.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

base_files() {
    # Minimal /etc and mount points every image gets.
    local r="$1"
    mkdir -p "$r"/{etc,tmp,proc,sys,dev,root,run,var/tmp,home}
    chmod 1777 "$r/tmp" "$r/var/tmp"
    [ -e "$r/etc/passwd" ] || printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$r/etc/passwd"
    [ -e "$r/etc/group" ] || printf 'root:x:0:\nnogroup:x:65534:\n' >"$r/etc/group"
}

import_rootfs() {
    # $1 rootfs dir, $2 image tag, rest: extra --change lines
    local dir="$1" tag="$2"
    shift 2
    local changes=(--change "ENV $PATH_ENV")
    local c
    for c in "$@"; do changes+=(--change "$c"); done
    tar --numeric-owner -C "$dir" -cf - . | "$DOCKER" import "${changes[@]}" \
        --message "built by tests/images/build.sh" - "$tag" >/dev/null
    say "$tag: $("$DOCKER" image inspect --format '{{.Size}}' "$tag" | awk '{printf "%.1f MB", $1/1e6}')"
}

# ---------------------------------------------------------------- busybox
build_busybox() {
    local bb=/bin/busybox r="$WORK/busybox" applet
    [ -x "$bb" ] || die "$bb missing (apt-get install busybox-static)"
    # busybox-static is a static binary; a dynamic one would not work alone.
    if command -v ldd >/dev/null && ldd "$bb" 2>&1 | grep -q '=>'; then
        die "$bb is dynamically linked; install busybox-static"
    fi
    mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin}
    cp "$bb" "$r/bin/busybox"
    for applet in $("$bb" --list-full); do
        [ "$applet" = bin/busybox ] && continue
        mkdir -p "$r/$(dirname "$applet")"
        ln -sf /bin/busybox "$r/$applet"
    done
    base_files "$r"
    import_rootfs "$r" "$BUSYBOX_IMAGE" 'CMD ["/bin/sh"]'
}

# ---------------------------------------------------------------- python
mirror() {
    if [ -n "${SPEAR_MIRROR:-}" ]; then echo "$SPEAR_MIRROR"; return; fi
    local m=""
    if compgen -G "/etc/apt/sources.list.d/*.sources" >/dev/null; then
        # deb822: first URIs line that is not the security archive
        m=$(grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null \
            | awk '{print $2}' | grep -v -- '-security' | head -n1 || true)
    fi
    if [ -z "$m" ] && [ -f /etc/apt/sources.list ]; then
        m=$(awk '$1=="deb" && $0 !~ /security/ {for (i=2;i<=NF;i++) if ($i ~ /^https?:/) {print $i; exit}}' /etc/apt/sources.list)
    fi
    echo "${m:-http://deb.debian.org/debian}"
}

suite() {
    if [ -n "${SPEAR_SUITE:-}" ]; then echo "$SPEAR_SUITE"; return; fi
    # shellcheck disable=SC1091
    (. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
}

build_python() {
    local r="$WORK/python" m s t0
    command -v debootstrap >/dev/null || die "debootstrap missing (apt-get install debootstrap)"
    m=$(mirror)
    s=$(suite)
    t0=$(date +%s)
    say "debootstrap $s from $m (minbase + python3) ..."
    if ! debootstrap --variant=minbase --include=python3 "$s" "$r" "$m" >"$WORK/debootstrap.log" 2>&1; then
        tail -n 20 "$WORK/debootstrap.log" >&2
        die "debootstrap failed"
    fi
    say "debootstrap took $(($(date +%s) - t0)) s"
    # Shrink: package caches, indexes, docs, locales.
    rm -rf "$r"/var/cache/apt/* "$r"/var/lib/apt/lists/* "$r"/usr/share/doc/* \
        "$r"/usr/share/man/* "$r"/usr/share/info/* "$r"/usr/share/locale/* \
        "$r"/var/log/* "$r"/tmp/* "$r"/var/tmp/*
    find "$r"/usr/lib/python3* -name __pycache__ -prune -exec rm -rf {} + 2>/dev/null || true
    # debootstrap copies the host's resolver and hostname; drop them.
    rm -f "$r/etc/resolv.conf" "$r/etc/hostname"
    base_files "$r"
    chroot "$r" /usr/bin/python3 -c 'import json, socket' \
        || die "python3 does not run in the new rootfs"
    import_rootfs "$r" "$PYTHON_IMAGE" 'CMD ["/usr/bin/python3"]' 'ENV PYTHONDONTWRITEBYTECODE=1'
}

if exists "$BUSYBOX_IMAGE"; then say "$BUSYBOX_IMAGE exists, kept"; else build_busybox; fi
if exists "$PYTHON_IMAGE"; then say "$PYTHON_IMAGE exists, kept"; else build_python; fi

# Smoke test: both images run a command with no network.
out=$(printf 'spear' | "$DOCKER" run --rm -i --network none "$BUSYBOX_IMAGE" tr a-z A-Z)
[ "$out" = SPEAR ] || die "$BUSYBOX_IMAGE smoke test printed '$out'"
out=$("$DOCKER" run --rm --network none "$PYTHON_IMAGE" python3 -c 'import json; print(json.dumps(1))')
[ "$out" = 1 ] || die "$PYTHON_IMAGE smoke test printed '$out'"
say "images ready: $BUSYBOX_IMAGE $PYTHON_IMAGE"
