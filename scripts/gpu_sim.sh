#!/bin/sh
# Install Mesa's software Vulkan driver (lavapipe, Mesa >= 24) so LiteRT's GPU delegate
# (ML Drift over WebGPU/Vulkan) can run on a machine without a GPU.
#
#   sh scripts/gpu_sim.sh                 install, or exit non-zero saying why it could not
#   sh scripts/gpu_sim.sh --best-effort   same, but always exit 0 (used by `make test`: GPU tests then skip)
#
# Debian bookworm's own Mesa (22.x) is too old for the delegate; bookworm-backports has Mesa 24+.
# No package-registry address is written in this repository: the backports entry reuses the
# mirror this machine's apt sources already use for its release, found at run time.
# Idempotent: does nothing when a Mesa >= 24 lavapipe ICD is already installed.
set -u

MIN_MESA=24
BEST_EFFORT=0
[ "${1:-}" = "--best-effort" ] && BEST_EFFORT=1
LIST=/etc/apt/sources.list.d/litegate-backports.sources
WROTE_LIST=0

say() { echo "gpu-sim: $*"; }
give_up() {
    say "$*"
    if [ "$WROTE_LIST" = 1 ]; then rm -f "$LIST"; say "removed $LIST again"; fi
    if [ "$BEST_EFFORT" = 1 ]; then
        say "continuing without a Vulkan driver: the GPU delegate tests will skip (run \`make gpu-sim\` as root to install)"
        exit 0
    fi
    exit 1
}

mesa_version() { dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null; }

lavapipe_ok() {
    v=$(mesa_version) || return 1
    [ -n "$v" ] || return 1
    dpkg --compare-versions "$v" ge "$MIN_MESA" || return 1
    ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1
}

if command -v dpkg-query >/dev/null 2>&1 && lavapipe_ok; then
    say "lavapipe already installed (mesa-vulkan-drivers $(mesa_version))"
    exit 0
fi

command -v apt-get >/dev/null 2>&1 || give_up "apt-get not found: install Mesa >= $MIN_MESA's Vulkan drivers (lavapipe) by hand"
[ "$(id -u)" = 0 ] || give_up "needs root to install packages (run: sudo make gpu-sim)"
[ -r /etc/os-release ] || give_up "no /etc/os-release: cannot tell the distribution release"
# shellcheck disable=SC1091
. /etc/os-release
codename=${VERSION_CODENAME:-}
[ "${ID:-}" = debian ] && [ -n "$codename" ] || give_up "only Debian is handled (this is ${PRETTY_NAME:-unknown})"

# shellcheck source=scripts/apt_source.sh
. "$(dirname "$0")/apt_source.sh"

src=$(find_source) || give_up "no apt source for '$codename' found in /etc/apt/sources.list{,.d}: cannot derive a mirror"
mirror=$(printf '%s' "$src" | cut -f1)
keyring=$(printf '%s' "$src" | cut -f2)
[ -n "$mirror" ] || give_up "could not read the mirror URI of the '$codename' apt source"

[ -e "$LIST" ] || WROTE_LIST=1
{
    echo "# Written by litegate's scripts/gpu_sim.sh: Mesa >= $MIN_MESA (lavapipe) for the LiteRT GPU delegate."
    echo "Types: deb"
    echo "URIs: $mirror"
    echo "Suites: $codename-backports"
    echo "Components: main"
    if [ -n "$keyring" ]; then echo "Signed-By: $keyring"; fi
} > "$LIST.tmp" && mv "$LIST.tmp" "$LIST" || give_up "cannot write $LIST"
say "wrote $LIST ($codename-backports from the machine's own mirror)"

run_apt() {
    if command -v timeout >/dev/null 2>&1; then timeout 900 "$@"; else "$@"; fi
}
export DEBIAN_FRONTEND=noninteractive
run_apt apt-get -o Acquire::Retries=1 -o Acquire::http::Timeout=30 update -q \
    || give_up "apt-get update failed (no network or mirror unreachable)"
run_apt apt-get install -y -q --no-install-recommends -t "$codename-backports" mesa-vulkan-drivers libvulkan1 \
    || give_up "apt-get install -t $codename-backports mesa-vulkan-drivers failed"

lavapipe_ok || give_up "installed mesa-vulkan-drivers $(mesa_version), but no Mesa >= $MIN_MESA lavapipe ICD is present"
say "installed lavapipe: mesa-vulkan-drivers $(mesa_version)"
