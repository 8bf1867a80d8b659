#!/usr/bin/env bash
# Installs the freshly built .deb on this machine with dpkg -i, checks the
# binary, the files and the installed unit, then purges it and checks that
# nothing is left behind. Run as root (CI does, after the tests).
# Refuses to run where ctsync is already installed, so an operator's own
# installation is never replaced or purged.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
if dpkg-query -W -f='${Status}' ctsync 2>/dev/null | grep -q "ok installed"; then
  echo "package-check: ctsync is already installed here; not touching it" >&2
  exit 1
fi
out=$(mktemp -d /tmp/ctsync-deb.XXXXXX)
trap 'dpkg --purge ctsync >/dev/null 2>&1 || true; rm -rf "$out"' EXIT
deb=$(CARGO_TARGET_DIR=target/package scripts/package.sh --output "$out" | tail -n 1)
echo "package-check: installing $deb"
dpkg -i "$deb" >/dev/null
files=$(dpkg -L ctsync)
/usr/sbin/ctsyncd --version | grep -q "^ctsyncd " || { echo "ctsyncd --version failed" >&2; exit 1; }
for f in /usr/sbin/ctsyncd /etc/ctsync/ctsyncd.yaml /usr/share/ctsync/primary-backup.sh \
         /usr/share/man/man8/ctsyncd.8.gz /usr/share/doc/ctsync/copyright; do
  [ -e "$f" ] || { echo "package-check: $f not installed" >&2; exit 1; }
done
unit=$(printf '%s\n' "$files" | grep '/systemd/system/ctsyncd.service$')
verify=$(systemd-analyze verify "$unit" 2>&1) || { echo "$verify" >&2; exit 1; }
[ -z "$verify" ] || { echo "package-check: systemd-analyze verify: $verify" >&2; exit 1; }
# The shipped config names no peer: the daemon must refuse it with the key.
if msg=$(/usr/sbin/ctsyncd -C /etc/ctsync/ctsyncd.yaml 2>&1); then
  echo "package-check: the shipped config started a daemon" >&2; exit 1
fi
printf '%s\n' "$msg" | grep -q "sync.channels" || { echo "package-check: unexpected refusal: $msg" >&2; exit 1; }
dpkg --purge ctsync >/dev/null
left=""
while IFS= read -r f; do
  [ -z "$f" ] && continue
  [ -d "$f" ] && continue   # shared directories such as /usr/sbin stay
  [ -e "$f" ] && left="$left $f"
done <<<"$files"
[ -d /etc/ctsync ] && left="$left /etc/ctsync"
[ -z "$left" ] || { echo "package-check: left after purge:$left" >&2; exit 1; }
echo "package-check: install, files, unit and purge OK"
