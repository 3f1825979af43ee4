#!/bin/sh
# Set up the `arm64-emu` backend: an arm64 Debian root with aarch64 LiteRT, run under QEMU user mode with
# litegate's own instruction-counting TCG plugin.
#
#   sh scripts/arm_sim.sh                 set up, or exit non-zero saying why it could not
#   sh scripts/arm_sim.sh --best-effort   same, but always exit 0 (used by `make test`: the ARM tests then skip)
#
# Layout under $LITEGATE_ARM_ROOT (default /opt/litegate-arm64):
#   rootfs/                 arm64 Debian (debootstrap minbase + python3) with the pinned CPU description
#   rootfs/opt/litegate/    aarch64 wheels (wheels/) and their install (site/: ai_edge_litert, numpy)
#   insn_count.so           the TCG plugin, compiled from scripts/arm_sim/insn_count.c
#   ready                   written last: what was installed (litegate.backends.arm reads it)
# Each step checks whether it is already done, so a second run takes seconds. The Debian mirror is the one this
# machine's apt sources use (no address is written in this repository); the wheels come from pip's own
# configured index. Needs root, apt and Debian.
set -u

BEST_EFFORT=0
[ "${1:-}" = "--best-effort" ] && BEST_EFFORT=1
HERE=$(cd "$(dirname "$0")" && pwd)
ARM_HOME=${LITEGATE_ARM_ROOT:-/opt/litegate-arm64}
ROOT=$ARM_HOME/rootfs
PIP=${PIP:-python3 -m pip}
LITERT_VERSION=2.3.0
# pip matches --platform tags exactly: manylinux_2_27 (ai-edge-litert 2.x; without it pip settles on 1.4.0) and
# the older tags its dependencies use. Debian bookworm's glibc (2.36) runs all of them.
PLATFORMS="--platform manylinux_2_27_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64"
REQUIREMENTS="ai-edge-litert==$LITERT_VERSION"
PACKAGES="qemu-user qemu-user-static binfmt-support debootstrap gcc libc6-dev"

say() { echo "arm-sim: $*"; }
give_up() {
    say "$*"
    if [ "$BEST_EFFORT" = 1 ]; then
        say "continuing without the arm64 root: the arm64-emu tests will skip (run \`make arm-sim\` as root to set it up)"
        exit 0
    fi
    exit 1
}
timed() { if command -v timeout >/dev/null 2>&1; then timeout "$@"; else shift; "$@"; fi; }

command -v apt-get >/dev/null 2>&1 || give_up "apt-get not found: this set-up needs Debian's qemu-user and debootstrap"
if [ "$(id -u)" != 0 ]; then
    if [ -f "$ARM_HOME/ready" ] && [ -e "$ARM_HOME/insn_count.so" ] && [ ! "$HERE/arm_sim/insn_count.c" -nt "$ARM_HOME/insn_count.so" ]; then
        say "already set up: $ARM_HOME"
        exit 0
    fi
    give_up "needs root to install packages and build $ROOT (run: sudo make arm-sim)"
fi
[ -r /etc/os-release ] || give_up "no /etc/os-release: cannot tell the distribution release"
# shellcheck disable=SC1091
. /etc/os-release
codename=${VERSION_CODENAME:-}
[ "${ID:-}" = debian ] && [ -n "$codename" ] || give_up "only Debian is handled (this is ${PRETTY_NAME:-unknown})"
case "$(uname -m)" in
    x86_64) ;;
    *) give_up "the arm64 emulation set-up is for x86_64 hosts (this is $(uname -m))" ;;
esac

# 1. Host packages: QEMU user mode (the dynamic qemu-aarch64 loads plugins; the static one runs debootstrap's
#    second stage through binfmt_misc), debootstrap, and a C compiler for the plugin.
missing=""
for p in $PACKAGES; do
    [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || missing="$missing $p"
done
if [ -n "$missing" ]; then
    export DEBIAN_FRONTEND=noninteractive
    say "installing$missing"
    # shellcheck disable=SC2086
    timed 900 apt-get install -y -q --no-install-recommends $missing >/dev/null \
        || { timed 900 apt-get -o Acquire::Retries=1 update -q >/dev/null \
             && timed 900 apt-get install -y -q --no-install-recommends $missing >/dev/null; } \
        || give_up "apt-get install$missing failed"
fi
qemu-aarch64 -h 2>/dev/null | grep -q -- '-plugin' || give_up "$(command -v qemu-aarch64) has no -plugin option"

# 2. The arm64 root: debootstrap's first stage on the host, the second stage emulated (minutes), which execs
#    arm64 programs inside the root through binfmt_misc (only needed here: litegate runs qemu-aarch64 itself).
#    A finished root has python3 and no /debootstrap directory left; anything else is rebuilt.
if [ -x "$ROOT/usr/bin/python3" ] && [ ! -d "$ROOT/debootstrap" ]; then
    say "arm64 root already built: $ROOT"
else
    if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null \
            || give_up "cannot mount binfmt_misc (a container without that privilege cannot run arm64 programs)"
    fi
    [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 \
        || give_up "update-binfmts --enable qemu-aarch64 failed"
    grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null || give_up "binfmt for aarch64 is not enabled"
    # shellcheck source=scripts/apt_source.sh
    . "$HERE/apt_source.sh"
    src=$(find_source) || give_up "no apt source for '$codename' in /etc/apt/sources.list{,.d}: cannot derive a mirror"
    mirror=$(printf '%s' "$src" | cut -f1)
    keyring=$(printf '%s' "$src" | cut -f2)
    [ -n "$mirror" ] || give_up "could not read the mirror URI of the '$codename' apt source"
    rm -rf "$ROOT" && mkdir -p "$ROOT" || give_up "cannot create $ROOT"
    say "debootstrap arm64 $codename into $ROOT from this machine's mirror (first stage)"
    timed 1800 debootstrap --arch=arm64 --foreign --variant=minbase --include=python3 \
        ${keyring:+--keyring="$keyring"} "$codename" "$ROOT" "$mirror" >"$ARM_HOME/debootstrap.log" 2>&1 \
        || give_up "debootstrap (first stage) failed: see $ARM_HOME/debootstrap.log"
    say "second stage, emulated (several minutes)"
    timed 3600 chroot "$ROOT" /debootstrap/debootstrap --second-stage >>"$ARM_HOME/debootstrap.log" 2>&1 \
        || give_up "debootstrap --second-stage failed: see $ARM_HOME/debootstrap.log"
    [ -x "$ROOT/usr/bin/python3" ] || give_up "the arm64 root has no python3 after debootstrap"
fi
guest_python=$(basename "$(readlink -f "$ROOT/usr/bin/python3")")
py_version=${guest_python#python}
[ -n "$py_version" ] || give_up "cannot tell the arm64 root's Python version"

# 3. A fixed CPU for the guest: LiteRT's cpuinfo parses /proc/cpuinfo and /sys (the host's are x86 and it
#    crashes), and XNNPACK picks kernels by CPU features. qemu-aarch64 -L looks these paths up in the root first.
mkdir -p "$ROOT/proc" "$ROOT/sys/devices/system/cpu"
cat >"$ROOT/proc/cpuinfo" <<'CPUINFO'
processor	: 0
BogoMIPS	: 48.00
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x4
CPU part	: 0xd0b
CPU revision	: 1

CPUINFO
echo 0 >"$ROOT/sys/devices/system/cpu/possible"
echo 0 >"$ROOT/sys/devices/system/cpu/present"
echo 0 >"$ROOT/sys/devices/system/cpu/online"

# 4. aarch64 wheels, fetched by the host's pip from its own configured index and installed (unpacked) for the
#    guest's Python with --target: pip inside the root would need the host's certificates and configuration.
SITE=$ROOT/opt/litegate/site
WHEELS=$ROOT/opt/litegate/wheels
if [ -d "$SITE/ai_edge_litert" ] && ls "$SITE"/ai_edge_litert-"$LITERT_VERSION".dist-info >/dev/null 2>&1; then
    say "aarch64 LiteRT $LITERT_VERSION already installed: $SITE"
else
    mkdir -p "$WHEELS"
    # shellcheck disable=SC2086
    timed 1800 $PIP download -q -d "$WHEELS" --only-binary=:all: $PLATFORMS \
        --python-version "$py_version" $REQUIREMENTS || give_up "pip download of the aarch64 wheels failed"
    rm -rf "$SITE"
    # shellcheck disable=SC2086
    timed 900 $PIP install -q --no-warn-conflicts --no-index --find-links "$WHEELS" --target "$SITE" --only-binary=:all: \
        $PLATFORMS --python-version "$py_version" $REQUIREMENTS \
        || give_up "installing the aarch64 wheels into $SITE failed"
fi

# 5. The instruction-counting plugin, from this repository's C source.
PLUGIN=$ARM_HOME/insn_count.so
if [ ! -e "$PLUGIN" ] || [ "$HERE/arm_sim/insn_count.c" -nt "$PLUGIN" ]; then
    gcc -shared -fPIC -O2 -Wall -o "$PLUGIN.tmp" "$HERE/arm_sim/insn_count.c" && mv "$PLUGIN.tmp" "$PLUGIN" \
        || give_up "compiling the TCG plugin failed"
    say "compiled $PLUGIN"
fi

# 6. A smoke run: the guest imports LiteRT under the plugin-capable emulator with the pinned CPU.
QEMU=$(command -v qemu-aarch64)
env -i PYTHONPATH=/opt/litegate/site PYTHONNOUSERSITE=1 "$QEMU" -L "$ROOT" -cpu cortex-a76 \
    -plugin "$PLUGIN" "$ROOT/usr/bin/$guest_python" -c 'import ai_edge_litert.interpreter' \
    || give_up "the arm64 guest could not import ai_edge_litert under $QEMU"

{
    echo "qemu=$QEMU"
    echo "qemu_version=$("$QEMU" --version | head -n 1)"
    echo "python=/usr/bin/$guest_python"
    echo "site=/opt/litegate/site"
    echo "plugin=$PLUGIN"
    echo "cpu=cortex-a76"
    echo "litert=$LITERT_VERSION"
} >"$ARM_HOME/ready.tmp" && mv "$ARM_HOME/ready.tmp" "$ARM_HOME/ready" || give_up "cannot write $ARM_HOME/ready"
say "ready: $ARM_HOME (qemu-aarch64 with $PLUGIN, aarch64 LiteRT $LITERT_VERSION, Python $py_version)"
