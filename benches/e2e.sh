#!/usr/bin/env bash
# End to end over TUN (issue 6, second part), in network namespaces of its
# own; never touches the root namespace's links or sends traffic outside
# them. Needs root, curl, python3; ab (Debian: apache2-utils) for the
# connection-rate rows.
#
#   benches/e2e.sh [path/to/ephemera] > e2e.tsv
#
# stdout: rows "measurement<TAB>ephemera<TAB>kernel". Progress goes to stderr.
# - bulk: `curl -o /dev/null http://10.7.0.2/bytes/N` from the kernel end of
#   the TUN to `ephemera up`, at MTU 1500 and 65535; kernel ceiling: the same
#   curl over a veth pair between two namespaces to `python3 -m http.server`
#   serving an N-byte file.
# - rate: `ab -n REQS -c CONC` on /bytes/100, connections/s and p50/p99.
set -euo pipefail

BIN=${1:-${CARGO_TARGET_DIR:-target}/release/ephemera}
N=${E2E_BYTES:-200000000}
REQS=${E2E_REQUESTS:-5000}
CONC=${E2E_CONCURRENCY:-16}

if [ "$(id -u)" != 0 ] || ! command -v ip >/dev/null; then
    echo "SKIP: e2e needs root and iproute2" >&2
    exit 0
fi
[ -x "$BIN" ] || { echo "no ephemera binary at $BIN (cargo build --release)" >&2; exit 1; }

NS=eph-bench-$$
KA=eph-bench-ka-$$
KB=eph-bench-kb-$$
TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for n in "$NS" "$KA" "$KB"; do ip netns del "$n" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT

wait_http() { # ns url
    for _ in $(seq 100); do
        ip netns exec "$1" curl -s -o /dev/null --max-time 1 "$2" && return 0
        sleep 0.1
    done
    echo "no HTTP answer from $2" >&2
    return 1
}

bulk() { # ns url -> MB/s
    ip netns exec "$1" curl -s -o /dev/null --max-time 120 -w '%{speed_download}' "$2" |
        awk '{printf "%.0f MB/s", $1 / 1e6}'
}

rate() { # ns url -> "conn/s|p50|p99"
    if ! command -v ab >/dev/null; then
        echo "not measured (no ab)|–|–"
        return
    fi
    # A failed ab run reports what it got rather than ending the script.
    { ip netns exec "$1" ab -q -n "$REQS" -c "$CONC" "$2" 2>/dev/null || true; } | awk '
        /^Requests per second/ {r = $4}
        /^  50%/ {p50 = $2}
        /^  99%/ {p99 = $2}
        END {printf "%.0f/s|%s ms|%s ms", r, p50, p99}'
}

# ---- kernel to kernel over veth: the ceiling ----
ip netns add "$KA"
ip netns add "$KB"
ip link add eph-a-$$ netns "$KA" type veth peer name eph-b-$$ netns "$KB"
ip -n "$KA" addr add 10.8.0.1/24 dev eph-a-$$
ip -n "$KB" addr add 10.8.0.2/24 dev eph-b-$$
for n in "$KA" "$KB"; do ip -n "$n" link set lo up; done
ip -n "$KA" link set eph-a-$$ up
ip -n "$KB" link set eph-b-$$ up
mkdir -p "$TMP/www/bytes"
head -c "$N" /dev/zero > "$TMP/www/bytes/$N"
head -c 100 /dev/zero > "$TMP/www/bytes/100"
ip netns exec "$KB" python3 -m http.server --bind 10.8.0.2 80 --directory "$TMP/www" >/dev/null 2>&1 &
PIDS+=($!)
wait_http "$KA" http://10.8.0.2/bytes/100
echo "kernel veth bulk..." >&2
K_BULK=$(bulk "$KA" "http://10.8.0.2/bytes/$N")
ip -n "$KA" link set eph-a-$$ mtu 65535
ip -n "$KB" link set eph-b-$$ mtu 65535
K_BULK_JUMBO=$(bulk "$KA" "http://10.8.0.2/bytes/$N")
ip -n "$KA" link set eph-a-$$ mtu 1500
ip -n "$KB" link set eph-b-$$ mtu 1500
echo "kernel veth rate..." >&2
K_RATE=$(rate "$KA" http://10.8.0.2/bytes/100)

# ---- ephemera over TUN ----
ip netns add "$NS"
ip -n "$NS" link set lo up
run_ephemera() { # mtu
    ip netns exec "$NS" "$BIN" up --tun tun0 --addr 10.7.0.2/24 --http 80 --mtu "$1" \
        >"$TMP/ephemera-$1.log" 2>&1 &
    EPID=$!
    PIDS+=($EPID)
    wait_http "$NS" http://10.7.0.2/bytes/100
}
stop_ephemera() {
    kill -INT "$EPID" 2>/dev/null || true
    wait "$EPID" 2>/dev/null || true
}
echo "ephemera bulk, MTU 1500..." >&2
run_ephemera 1500
E_BULK=$(bulk "$NS" "http://10.7.0.2/bytes/$N")
echo "ephemera rate..." >&2
E_RATE=$(rate "$NS" http://10.7.0.2/bytes/100)
stop_ephemera
echo "ephemera bulk, MTU 65535..." >&2
run_ephemera 65535
E_BULK_JUMBO=$(bulk "$NS" "http://10.7.0.2/bytes/$N")
stop_ephemera

printf 'bulk GET of %s bytes, MTU 1500 (curl)\t%s\t%s\n' "$N" "$E_BULK" "$K_BULK"
printf 'bulk GET of %s bytes, MTU 65535 (curl)\t%s\t%s\n' "$N" "$E_BULK_JUMBO" "$K_BULK_JUMBO"
IFS='|' read -r er e50 e99 <<<"$E_RATE"
IFS='|' read -r kr k50 k99 <<<"$K_RATE"
printf 'connections/s, ab -n %s -c %s, GET /bytes/100\t%s\t%s\n' "$REQS" "$CONC" "$er" "$kr"
printf 'latency p50\t%s\t%s\n' "$e50" "$k50"
printf 'latency p99\t%s\t%s\n' "$e99" "$k99"
