#!/usr/bin/env bash
# Runs every cargo-fuzz target (or those named) for a fixed time each, one
# after the other in a single process, and prints executions and crashes per
# target. A crash fails the run; its input is in fuzz/artifacts/<target>/.
# Inputs kept in fuzz/regressions/<target>/ (past crashes) run every time.
# Builds as cargo-fuzz does by default: optimized, with debug assertions,
# overflow checks and AddressSanitizer.
# Usage: scripts/fuzz.sh SECONDS_PER_TARGET [TARGET...]
# FUZZ_RUNS=N also stops each target after N executions (for a long run:
# FUZZ_RUNS=10000000 scripts/fuzz.sh 3600).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
secs=${1:?usage: scripts/fuzz.sh SECONDS_PER_TARGET [TARGET...]}
shift
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "fuzzing skipped: no nightly Rust toolchain (cargo-fuzz needs one for its sanitizer flags); install it with 'rustup toolchain install nightly'"
  exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzzing skipped: cargo-fuzz is not installed (scripts/setup.sh installs it: cargo install --locked cargo-fuzz)"
  exit 0
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cd fuzz && cargo +nightly fuzz list)
fi
# Seeds, so that the config parsers start from files that parse.
mkdir -p fuzz/corpus/config_yaml fuzz/corpus/config_conntrackd
cp -f etc/ctsyncd.yaml config/*.yaml fuzz/corpus/config_yaml/ 2>/dev/null || true
cp -f tests/fixtures/conntrackd/*.conf fuzz/corpus/config_conntrackd/ 2>/dev/null || true
(cd fuzz && cargo +nightly fuzz build)
failed=0
summary=()
for t in "${targets[@]}"; do
  log=$(mktemp)
  mkdir -p "fuzz/corpus/$t"
  # Inputs that once crashed a target are replayed first on every run.
  if [ -d "fuzz/regressions/$t" ]; then cp -f "fuzz/regressions/$t"/* "fuzz/corpus/$t/"; fi
  limits=(-max_total_time="$secs")
  [ -n "${FUZZ_RUNS:-}" ] && limits+=(-runs="$FUZZ_RUNS")
  start=$SECONDS
  if (cd fuzz && cargo +nightly fuzz run "$t" -- "${limits[@]}" -print_final_stats=1) >"$log" 2>&1; then
    status="0 crashes"
  else
    status="CRASH (input in fuzz/artifacts/$t/)"
    failed=1
    grep -E "panicked|ERROR: libFuzzer|SUMMARY" "$log" | head -5 || true
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  summary+=("$(printf '%-20s %12s executions in %s s, %s' "$t" "${execs:-?}" "$((SECONDS - start))" "$status")")
  rm -f "$log"
done
printf '%s\n' "${summary[@]}"
exit $failed
