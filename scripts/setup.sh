#!/usr/bin/env bash
# Installs what ctsync needs on a fresh Debian 12 (as root).
#
#   scripts/setup.sh          everything the tests need (scripts/test.sh, .ci/run):
#                             the demo's packages plus conntrackd, keepalived,
#                             tcpdump, vsftpd, iptables, prometheus (for
#                             promtool), the packaging tools,
#                             cargo-deb, cargo-nextest and cargo-fuzz
#   scripts/setup.sh demo     only what scripts/demo.sh needs: iproute2,
#                             nftables, conntrack, socat, a C linker and a
#                             Rust toolchain (no cargo tool is compiled)
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
what=${1:-test}
case "$what" in
  demo) packages="conntrack nftables iproute2 socat procps gcc" ;;
  test) packages="conntrack conntrackd keepalived nftables iproute2 socat tcpdump python3 procps gcc lintian dpkg-dev systemd vsftpd iptables prometheus" ;;
  *) echo "usage: scripts/setup.sh [demo|test]" >&2; exit 2 ;;
esac
need=()
for pkg in $packages; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [ "$what" = test ]; then
  # conntrackd's package enables a service that would compete for the sync
  # port and the conntrack table; the tests start their own instances.
  systemctl disable --now conntrackd >/dev/null 2>&1 || true
  systemctl disable --now keepalived >/dev/null 2>&1 || true
  # The metrics test only needs promtool from the prometheus package, not its server.
  systemctl disable --now prometheus >/dev/null 2>&1 || true
  # The FTP test runs its own vsftpd in a namespace.
  systemctl disable --now vsftpd >/dev/null 2>&1 || true
fi
if ! command -v cargo >/dev/null; then
  [ -x "$HOME/.cargo/bin/cargo" ] || {
    apt-get install -y -qq curl ca-certificates >/dev/null
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
  }
  export PATH="$HOME/.cargo/bin:$PATH"
fi
modprobe nf_conntrack 2>/dev/null || true
[ "$what" = demo ] && exit 0

rustup component add rustfmt clippy >/dev/null 2>&1 || true
# The test runner: it serializes the lab tests (.config/nextest.toml);
# scripts/test.sh falls back to cargo test only if this install fails.
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest || echo "cargo-nextest could not be installed: tests run with cargo test" >&2
fi
# The package (scripts/package.sh) and the tests that install it
# (tests/package.rs, tests/install.rs) need cargo-deb.
if ! cargo deb --version >/dev/null 2>&1; then
  cargo install --locked cargo-deb || echo "cargo-deb could not be installed: the package tests will be skipped" >&2
fi
# Fuzzing (scripts/fuzz.sh) needs cargo-fuzz, and a nightly toolchain to run.
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install --locked cargo-fuzz || echo "cargo-fuzz could not be installed: fuzzing will be skipped" >&2
fi
