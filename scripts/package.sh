#!/usr/bin/env bash
# Builds the Debian package (metadata: [package.metadata.deb] in Cargo.toml)
# and runs lintian on it when lintian is installed.
#
#   scripts/package.sh [--output DIR] [other cargo-deb arguments]
#
# Prints the path of the .deb on its last line. Exit status 3 means
# cargo-deb is missing and could not be installed.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

if ! cargo deb --version >/dev/null 2>&1; then
  echo "package.sh: installing cargo-deb" >&2
  cargo install cargo-deb --locked >&2 || {
    echo "package.sh: cargo-deb is not installed and cannot be installed" >&2
    exit 3
  }
fi

# The man page is generated from the CLI definition; a stale one is a bug
# (tests/package.rs checks it too).
cargo run --quiet --example manpage -- --check >&2

deb=$(cargo deb "$@" | tail -n 1)
if command -v lintian >/dev/null 2>&1; then
  # Errors fail the build; warnings are printed for a person to judge.
  lintian --fail-on error "$deb" >&2 || {
    echo "package.sh: lintian found errors in $deb" >&2
    exit 1
  }
else
  echo "package.sh: lintian not installed, not checked" >&2
fi
echo "$deb"
