#!/usr/bin/env bash
# Build, once, the Debian trixie root filesystem the real-systemd tests boot
# with systemd-nspawn (systemd 257: knows Type=notify-reload), and cache it
# as a tarball under target/ so later runs restore it in seconds.
#
#   bash tests/systemd_nspawn/rootfs.sh            # -> prints the rootfs path
#
# Needs root and the Debian mirror this machine's apt uses (read from its
# apt sources, so no host is named here). Exit 2 (with the reason on stderr)
# when the rootfs cannot be built, e.g. without network: the nspawn tier
# fails with that reason (unless RG_SKIP_TIERS=nspawn).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="$ROOT/target/nspawn"
TARBALL="$CACHE/trixie-rootfs.tar"
ROOTFS="$CACHE/rootfs"
PACKAGES="systemd,systemd-sysv,dbus,python3,curl,iproute2,procps"
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock -w 900 9 || { echo "rootfs.sh: lock busy" >&2; exit 2; }

cant() { echo "rootfs.sh: $*" >&2; exit 2; }

[ "$(id -u)" = 0 ] || cant "needs root"

need=()
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
if [ "${#need[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}"; } \
        </dev/null >&2 || cant "cannot install ${need[*]}"
fi

if [ ! -f "$TARBALL" ]; then
    # The mirror apt already uses (deb822 or one-line sources).
    mirror="$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' \
              | grep -v -- '-security' | head -n1 || true)"
    if [ -z "$mirror" ]; then
        mirror="$(grep -hsE '^deb +(\[[^]]*\] +)?https?://' /etc/apt/sources.list \
                  | grep -v -- '-security' | sed -E 's/^deb +(\[[^]]*\] +)?//' | awk '{print $1}' | head -n1 || true)"
    fi
    [ -n "$mirror" ] || cant "no Debian mirror in this machine's apt sources"
    tmp="$CACHE/build.$$"
    rm -rf "$tmp"
    echo "rootfs.sh: debootstrap trixie from $mirror (once; ~90 s)" >&2
    if ! /usr/sbin/debootstrap --variant=minbase --include="$PACKAGES" trixie "$tmp" "$mirror" \
            </dev/null >"$CACHE/debootstrap.log" 2>&1; then
        rm -rf "$tmp"
        cant "debootstrap failed (no network?), see $CACHE/debootstrap.log"
    fi
    # Make the image boot quietly and fast: no getty, no network setup.
    rm -f "$tmp/etc/systemd/system/getty.target.wants/"* 2>/dev/null || true
    ln -sf /dev/null "$tmp/etc/systemd/system/systemd-networkd.service" 2>/dev/null || true
    ln -sf /dev/null "$tmp/etc/systemd/system/systemd-resolved.service" 2>/dev/null || true
    echo rgtest > "$tmp/etc/hostname"
    tar -C "$tmp" -cf "$TARBALL.part" . && mv "$TARBALL.part" "$TARBALL"
    rm -rf "$tmp"
fi

# A fresh copy for each run: the tests change it (units, files).
if [ ! -f "$ROOTFS/.restored-from" ] || [ "$(cat "$ROOTFS/.restored-from")" != "$(stat -c %Y "$TARBALL")" ] \
        || [ "${RESTORE:-1}" = 1 ]; then
    rm -rf "$ROOTFS"
    mkdir -p "$ROOTFS"
    tar -C "$ROOTFS" -xf "$TARBALL"
    stat -c %Y "$TARBALL" > "$ROOTFS/.restored-from"
fi
echo "$ROOTFS"
