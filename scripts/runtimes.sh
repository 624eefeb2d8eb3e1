#!/usr/bin/env bash
# Build the container runtimes GPU clusters use (enroot, pyxis, Apptainer) from
# their public source trees into one prefix. Run as root on Debian 12.
#
#   scripts/runtimes.sh SRC_DIR [PREFIX]        (PREFIX defaults to /opt/condastack-runtimes)
#
# SRC_DIR must hold these source trees (plain checkouts; the script never edits them,
# it builds in a copy under PREFIX/.build):
#   SRC_DIR/enroot     NVIDIA/enroot at tag v4.1.2, with its submodules filled in:
#                        deps/makeself       megastep/makeself at the commit v4.1.2 pins (5742be64)
#                        deps/linux-headers  sabotage-linux/kernel-headers at the pinned commit (c79004ad)
#                      (deps/musl is not needed: this is the glibc build). `git clone --recursive
#                      -b v4.1.2 https://github.com/NVIDIA/enroot` gives exactly this.
#   SRC_DIR/pyxis      NVIDIA/pyxis at tag v0.24.0
#   SRC_DIR/apptainer  apptainer/apptainer at tag v1.2.5 (the newest release whose mconfig
#                      accepts Debian 12's golang-go 1.19; 1.3.x asks for Go 1.20). A tree made
#                      with `git archive` has no .git: the script then writes VERSION from
#                      APPTAINER_VERSION (default 1.2.5). Go modules come from the Go module proxy.
#
# Idempotent: a runtime whose installed files are present at the expected version is skipped;
# set RUNTIMES_FORCE=1 to rebuild, RUNTIMES_ONLY="enroot pyxis" to build only some of them.
# Apptainer's own makefiles pin GOPROXY=https://proxy.golang.org; a GOPROXY set in the
# environment (a site mirror, or file:///… of a prepared module cache) is passed through to make. Logs go to PREFIX/.build/logs/<name>.log.
#
# Installed layout:
#   PREFIX/bin/enroot, enroot-* helpers     PREFIX/etc/enroot/   PREFIX/lib/enroot/  PREFIX/share/enroot/
#   PREFIX/lib/spank_pyxis.so (also PREFIX/lib/slurm/spank_pyxis.so)  PREFIX/share/pyxis/pyxis.conf
#   PREFIX/bin/apptainer (run-singularity, singularity link)  PREFIX/etc/apptainer/  PREFIX/libexec/apptainer/
set -euo pipefail

usage() { sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 1 ] && [ $# -le 2 ] || usage
SRC_DIR=$(cd "$1" && pwd)
PREFIX=${2:-/opt/condastack-runtimes}
JOBS=${JOBS:-2}
ENROOT_VERSION=4.1.2
PYXIS_VERSION=0.24.0
APPTAINER_VERSION=${APPTAINER_VERSION:-1.2.5}
BUILD=$PREFIX/.build
LOGS=$BUILD/logs

say() { printf '[runtimes] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (apt-get install and the installs into $PREFIX need it)"
for d in enroot enroot/deps/makeself enroot/deps/linux-headers pyxis apptainer; do
    [ -n "$(ls -A "$SRC_DIR/$d" 2>/dev/null)" ] || die "$SRC_DIR/$d is missing or empty (see the header of $0)"
done
mkdir -p "$PREFIX" "$LOGS"

# ---- build dependencies (only the ones missing are installed) -------------------------------
# enroot:    build-essential, libbsd-dev (strlcpy/strlcat: glibc 2.36 has none); at run time
#            jq, parallel, squashfs-tools, zstd, pigz, curl, gawk, uidmap (and squashfuse,
#            fuse-overlayfs for unprivileged images)
# pyxis:     libslurm-dev (slurm/spank.h)
# apptainer: golang-go (1.19), libseccomp-dev, pkg-config, cryptsetup-bin; at run time
#            squashfs-tools, squashfuse, fuse2fs, fuse-overlayfs, uidmap
PKGS=(build-essential pkg-config libbsd-dev libslurm-dev golang-go libseccomp-dev cryptsetup-bin
      squashfs-tools squashfuse fuse2fs fuse-overlayfs uidmap jq parallel zstd pigz curl gawk)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "apt-get install ${missing[*]}"
    apt-get update >"$LOGS/apt.log" 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" \
        >>"$LOGS/apt.log" 2>&1 || { tail -20 "$LOGS/apt.log"; die "apt-get install failed"; }
fi

# Copy a source tree into the build area (fresh each time we build).
stage() {  # stage NAME -> prints build dir
    local dst=$BUILD/$1
    rm -rf "$dst"
    cp -a "$SRC_DIR/$1" "$dst"
    printf '%s\n' "$dst"
}

run_logged() {  # run_logged NAME CMD...  (appends to the log; on failure shows its tail)
    local name=$1; shift
    if ! "$@" >>"$LOGS/$name.log" 2>&1; then
        tail -40 "$LOGS/$name.log" >&2
        die "$name: '$*' failed (full log: $LOGS/$name.log)"
    fi
}

# ---- enroot (glibc build) -------------------------------------------------------------------
build_enroot() {
    if [ -z "${RUNTIMES_FORCE:-}" ] && [ -x "$PREFIX/bin/enroot" ] \
       && "$PREFIX/bin/enroot" version 2>/dev/null | grep -qx "$ENROOT_VERSION"; then
        say "enroot $ENROOT_VERSION already installed; skipping"; return
    fi
    say "building enroot $ENROOT_VERSION (log: $LOGS/enroot.log)"
    : >"$LOGS/enroot.log"
    local b; b=$(stage enroot)
    # FORCE_GLIBC=1 skips musl. Debian 12's glibc 2.36 has no strlcpy/strlcat, so take them
    # from libbsd (its static archive first, the shared one for what the bundled subset lacks).
    # CPPFLAGS goes through the environment, not the command line: on the command line it would
    # also override deps/Makefile's own flags, and its bundled fparseln.c then fails to build.
    # LDLIBS must be on the command line (the top Makefile sets it with :=).
    CPPFLAGS="-D_GNU_SOURCE -include bsd/string.h" \
    run_logged enroot make -C "$b" -j"$JOBS" install FORCE_GLIBC=1 \
        LDLIBS="-l:libbsd.a /usr/lib/$(gcc -dumpmachine)/libbsd.so" \
        prefix="$PREFIX" sysconfdir="$PREFIX/etc"
    "$PREFIX/bin/enroot" version | grep -qx "$ENROOT_VERSION" || die "enroot: installed binary does not report $ENROOT_VERSION"
}

# ---- pyxis (SPANK plugin against Debian's libslurm-dev) -------------------------------------
build_pyxis() {
    local so=$PREFIX/lib/spank_pyxis.so
    if [ -z "${RUNTIMES_FORCE:-}" ] && [ -f "$so" ] && [ -f "$PREFIX/share/pyxis/VERSION" ] \
       && [ "$(cat "$PREFIX/share/pyxis/VERSION")" = "$PYXIS_VERSION" ]; then
        say "pyxis $PYXIS_VERSION already installed; skipping"; return
    fi
    say "building pyxis $PYXIS_VERSION (log: $LOGS/pyxis.log)"
    : >"$LOGS/pyxis.log"
    local b; b=$(stage pyxis)
    run_logged pyxis make -C "$b" -j"$JOBS" PYXIS_VER="$PYXIS_VERSION"
    # `make install` puts it in PREFIX/lib/slurm and writes share/pyxis/pyxis.conf ("required
    # PREFIX/lib/slurm/spank_pyxis.so"); keep a copy at PREFIX/lib too.
    run_logged pyxis make -C "$b" install prefix="$PREFIX" PYXIS_VER="$PYXIS_VERSION"
    install -m 644 "$b/spank_pyxis.so" "$so"
    printf '%s\n' "$PYXIS_VERSION" >"$PREFIX/share/pyxis/VERSION"
}

# ---- Apptainer (no setuid; as root nothing needs it) ----------------------------------------
build_apptainer() {
    if [ -z "${RUNTIMES_FORCE:-}" ] && [ -x "$PREFIX/bin/apptainer" ] \
       && "$PREFIX/bin/apptainer" --version 2>/dev/null | grep -qx "apptainer version $APPTAINER_VERSION"; then
        say "apptainer $APPTAINER_VERSION already installed; skipping"; return
    fi
    say "building apptainer $APPTAINER_VERSION with $(go version) (log: $LOGS/apptainer.log)"
    : >"$LOGS/apptainer.log"
    local b; b=$(stage apptainer)
    if [ ! -e "$b/.git" ] && [ ! -f "$b/VERSION" ]; then
        printf '%s\n' "$APPTAINER_VERSION" >"$b/VERSION"
    fi
    # Go modules come from GOPROXY (default https://proxy.golang.org) into the usual module cache.
    export GOFLAGS="${GOFLAGS:-} -p=$JOBS"
    (cd "$b" && run_logged apptainer ./mconfig -b builddir --prefix="$PREFIX" --without-suid)
    local goproxy=()
    [ -n "${GOPROXY:-}" ] && goproxy=(GOPROXY="$GOPROXY")
    run_logged apptainer make -C "$b/builddir" -j"$JOBS" "${goproxy[@]}"
    run_logged apptainer make -C "$b/builddir" install
    "$PREFIX/bin/apptainer" --version | grep -qx "apptainer version $APPTAINER_VERSION" \
        || die "apptainer: installed binary does not report $APPTAINER_VERSION"
}

ONLY=${RUNTIMES_ONLY:-enroot pyxis apptainer}
for r in $ONLY; do
    case $r in
        enroot|pyxis|apptainer) "build_$r" ;;
        *) die "RUNTIMES_ONLY: unknown runtime '$r' (enroot, pyxis, apptainer)" ;;
    esac
done
say "done: $PREFIX"
[ -x "$PREFIX/bin/enroot" ] && say "  enroot $("$PREFIX/bin/enroot" version)"
[ -f "$PREFIX/share/pyxis/VERSION" ] && say "  pyxis $(cat "$PREFIX/share/pyxis/VERSION") ($PREFIX/lib/spank_pyxis.so)"
[ -x "$PREFIX/bin/apptainer" ] && say "  $("$PREFIX/bin/apptainer" --version)"
exit 0
