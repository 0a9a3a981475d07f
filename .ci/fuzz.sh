#!/usr/bin/env bash
# Run every cargo-fuzz target for a bounded time; fail on any crash.
#
#   .ci/fuzz.sh [SECONDS]          # per target, default 60
#   FUZZ_TARGETS="stack_hostile" .ci/fuzz.sh 600
#
# Builds on the stable toolchain with RUSTC_BOOTSTRAP=1 (cargo-fuzz needs
# -Zsanitizer and friends). New corpus entries go to fuzz/work/<target>
# (ignored by git); the checked-in seeds in fuzz/corpus/<target> are read,
# never written. On a crash it prints the reproducer's path and base64 so
# the CI log alone is enough to add it to fuzz/regressions/<target>/.
set -euo pipefail

secs=${1:-60}
targets=${FUZZ_TARGETS:-"stack_hostile dns port_table stack_pair rx_split socks_udp syn_cookies"}
cd "$(dirname "$0")/../fuzz"

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
# No `--cfg fuzzing`: smoltcp's wire code skips every checksum check under
# it, which turns the link's corruption into "delivered" garbage
# (stack_pair) and makes fuzz runs disagree with the plain-test replay.
flags=(-O --no-cfg-fuzzing)

# Build first, so the time limit below is all fuzzing; `run` reuses it.
for t in $targets; do
    cargo fuzz build "${flags[@]}" "$t"
done

status=0
for t in $targets; do
    mkdir -p "work/$t" "artifacts/$t"
    log="work/$t.log"
    stamp="work/$t.start"
    touch "$stamp"
    echo "== fuzz $t for ${secs}s"
    if cargo fuzz run "${flags[@]}" "$t" "work/$t" "corpus/$t" -- \
        -max_total_time="$secs" -max_len=4096 -timeout=20 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1; then
        # Last status line: executions, coverage, features, corpus.
        grep -E '^#[0-9]+.*(DONE|pulse|NEW|REDUCE)' "$log" | tail -n 1 || true
        grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$log" || true
    else
        status=1
        echo "!! $t FAILED; the panic and the last lines of $log:"
        grep -m 3 -A 4 'panicked' "$log" || true
        echo "..."
        tail -n 40 "$log"
        found=0
        while IFS= read -r f; do
            found=1
            echo "reproducer: fuzz/$f"
            echo "base64: $(base64 -w0 "$f")"
            echo "replay:  cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -O --no-cfg-fuzzing $t $f"
            echo "keep it: cp fuzz/$f fuzz/regressions/$t/  (then cargo test --lib fuzzing::)"
        done < <(find "artifacts/$t" -type f -newer "$stamp")
        [ "$found" = 1 ] || echo "(no reproducer written; see the log above)"
    fi
done
exit $status
