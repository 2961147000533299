#!/bin/bash
# Build the root tree of the kernel-client guest (tests/kernel/uml.py) in the cache.
#
#   tests/kernel/build-guest.sh              build it unless it is there; print its path
#   tests/kernel/build-guest.sh --print-path print where it is (or would be), build nothing
#
# The tree is a debootstrap'd Debian (guest.env: suite, packages) with the User-Mode Linux
# modules of the host's user-mode-linux package copied to /lib/modules/<version>. It lives in
# $NASBLADE_CACHE/kernel/guest-<suite>-<GUEST_VERSION>-uml<kernel version>, so a new guest
# version or a new UML kernel gets a new tree and a warm machine pays nothing. It is built in
# a temporary directory next to it and renamed into place only when complete, so an
# interrupted build never leaves a tree that looks done; the leftovers of one are removed by
# the next build (their /proc and /sys mounts first). The guest boots this tree read-only
# through an overlayfs (uml.py): nothing writes into the cache after the rename.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=guest.env
. "$HERE/guest.env"
CACHE=${NASBLADE_CACHE:-$HOME/.cache/nasblade}
UML_MODULES=/usr/lib/uml/modules

kver() {
  local versions
  versions=$(ls "$UML_MODULES" 2>/dev/null || true)
  if [ -z "$versions" ] || [ "$(echo "$versions" | wc -l)" -ne 1 ]; then
    echo "build-guest: expected one kernel version under $UML_MODULES (install user-mode-linux: make apt), found: ${versions:-none}" >&2
    exit 1
  fi
  echo "$versions"
}

KVER=$(kver)
DEST=$CACHE/kernel/guest-$GUEST_SUITE-$GUEST_VERSION-uml$KVER

if [ "${1:-}" = "--print-path" ]; then
  echo "$DEST"
  exit 0
fi

if [ -f "$DEST/.nasblade-guest" ]; then
  echo "$DEST"
  exit 0
fi

for tool in debootstrap linux.uml; do
  command -v "$tool" >/dev/null || { echo "build-guest: $tool is missing (make apt)" >&2; exit 1; }
done

mkdir -p "$CACHE/kernel/debs"
exec 9>"$CACHE/kernel/.build.lock"
flock 9
if [ -f "$DEST/.nasblade-guest" ]; then   # built by another process while we waited
  echo "$DEST"
  exit 0
fi

# Leftovers of interrupted builds: unmount what debootstrap mounted inside, then remove.
remove_tree() {
  local t=$1
  { findmnt -rn -o TARGET | grep -F "$t/" || true; } | sort -r | while read -r m; do umount -l "$m" || true; done
  rm -rf --one-file-system "$t"
}
for old in "$DEST".tmp.*; do
  [ -e "$old" ] && remove_tree "$old"
done

TMP=$DEST.tmp.$$
trap 'remove_tree "$TMP"' EXIT
start=$(date +%s)
echo "build-guest: debootstrap $GUEST_SUITE into $TMP (packages: $GUEST_PACKAGES)" >&2
debootstrap --variant=minbase --include="$GUEST_PACKAGES" --cache-dir="$CACHE/kernel/debs" \
  "$GUEST_SUITE" "$TMP" "$GUEST_MIRROR" >"$CACHE/kernel/debootstrap.log" 2>&1 || {
  echo "build-guest: debootstrap failed; last lines of $CACHE/kernel/debootstrap.log:" >&2
  tail -20 "$CACHE/kernel/debootstrap.log" >&2
  exit 1
}
mkdir -p "$TMP/lib/modules"
cp -a "$UML_MODULES/$KVER" "$TMP/lib/modules/$KVER"
# what the guest's init needs: mount points, no services, a name, a hosts file
mkdir -p "$TMP/share" "$TMP/mnt/nfs" "$TMP/mnt/ext4"
echo nasblade-guest >"$TMP/etc/hostname"
printf '127.0.0.1 localhost\n10.0.2.15 nasblade-guest\n10.0.2.2 server\n' >"$TMP/etc/hosts"
: >"$TMP/etc/fstab"
rm -rf "$TMP/var/cache/apt/archives/"*.deb "$TMP/var/lib/apt/lists/"* 2>/dev/null || true
echo "suite=$GUEST_SUITE version=$GUEST_VERSION uml=$KVER packages=$GUEST_PACKAGES built=$(date -u +%FT%TZ)" \
  >"$TMP/.nasblade-guest"
# the checks the harness relies on, before the tree is declared done
for f in sbin/mount.nfs sbin/nbd-client sbin/mkfs.ext4 sbin/fsck.ext4 bin/ip sbin/modprobe usr/bin/fio \
         usr/bin/sqlite3 usr/bin/python3 "lib/modules/$KVER/kernel/fs/nfs/nfsv3.ko" \
         "lib/modules/$KVER/kernel/drivers/block/nbd.ko"; do
  [ -e "$TMP/$f" ] || [ -L "$TMP/$f" ] || { echo "build-guest: $f missing from the tree" >&2; exit 1; }
done
trap - EXIT
mv -T "$TMP" "$DEST"
echo "build-guest: built in $(( $(date +%s) - start )) s" >&2
echo "$DEST"
