#!/usr/bin/env bash
# Runs every benchmark of issues 6, 14 and 16 and regenerates docs/performance.md and
# docs/perf-segment.svg:
#
#   benches/run.sh            micro-benchmarks + memory (no root needed)
#   E2E=1 benches/run.sh      also the end-to-end TUN runs (root; benches/e2e.sh)
#
# About 3 minutes for the micro-benchmarks on two cores, about 10 in all
# with E2E (December 2026): every end-to-end series five times (E2E_RUNS),
# against the kernel's real servers (nginx, iperf3, socat, and ab and wrk
# as the load generators: apt-get install --no-install-recommends nginx
# iperf3 socat apache2-utils wrk), the scaling rows (--queues 1 against 2,
# nginx with 1 worker against 2), and a few minutes more the first time,
# when it builds smoltcp's own benchmark example. The E2E_* settings of
# benches/e2e.sh pass through; its short mode (E2E_QUICK=1) is for CI, not
# for this report.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
OUT=$CARGO_TARGET_DIR/ephemera-bench
mkdir -p "$OUT"

# The memory hierarchy's state before and after (a VM shares its
# last-level cache with other tenants): the report prints it.
probe() { cargo bench --bench cache_probe | sed -n "s/^\([0-9]\)/$1\t\1/p"; }
probe before > "$OUT/probe.tsv"
cargo bench --bench segment --bench port_table
cargo bench --bench memory > "$OUT/memory.tsv"
cargo bench --bench outbound | sed -n '/^## Outbound scale/,$p' > "$OUT/outbound.md"
cargo bench --bench steering | sed -n '/^## Steering cost/,$p' > "$OUT/steering.md"
cargo bench --bench shards | sed -n '/^## Shards without the kernel/,$p' > "$OUT/shards.md"
probe after >> "$OUT/probe.tsv"
if [ "${E2E:-0}" = 1 ]; then
    cargo build --release --bin ephemera
    bash benches/e2e.sh "$CARGO_TARGET_DIR/release/ephemera" > "$OUT/e2e.tsv"
else
    rm -f "$OUT/e2e.tsv"
fi
cmd="benches/run.sh"
[ "${E2E:-0}" = 1 ] && cmd="E2E=1 benches/run.sh"
REPORT_DATE=$(date -u '+%Y-%m-%d %H:%M UTC') REPORT_COMMAND="$cmd" \
    cargo run --release --example perf_report -- \
    "$CARGO_TARGET_DIR/criterion" "$OUT/memory.tsv" "$OUT/e2e.tsv" \
    docs/performance.md docs/perf-segment.svg "$OUT/probe.tsv"
# The outbound-scale, steering and shards sections print their own markdown.
cat "$OUT/outbound.md" "$OUT/steering.md" "$OUT/shards.md" >> docs/performance.md
