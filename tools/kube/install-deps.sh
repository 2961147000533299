#!/usr/bin/env bash
# Install the Debian packages listed in apt-packages.txt (only the missing ones).
. "$(dirname "$0")/lib.sh"
pkgs=$(grep -vE '^\s*(#|$)' "$CLUSTER_DIR/apt-packages.txt")
missing=()
for p in $pkgs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then log "apt: all packages present"; exit 0; fi
[ "$(id -u)" -eq 0 ] || die "need root to install: ${missing[*]}"
log "apt: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
stamp=/var/lib/apt/periodic/update-success-stamp
if [ ! -d /var/lib/apt/lists ] || [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v lock)" ] || [ "${APT_UPDATE:-0}" = 1 ]; then
  apt-get update -qq
fi
apt-get install -y -qq --no-install-recommends "${missing[@]}" || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; }
log "apt: done"
