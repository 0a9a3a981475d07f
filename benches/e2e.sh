#!/usr/bin/env bash
# End to end over TUN (issue 6, second part), in network namespaces of its
# own; never touches the root namespace's links or sends traffic outside
# them. Needs root, curl, python3; ab (Debian: apache2-utils) for the
# connection-rate rows; cargo for smoltcp's own example.
#
#   benches/e2e.sh [path/to/ephemera] > e2e.tsv
#
# stdout: rows "measurement<TAB>ephemera<TAB>smoltcp example<TAB>kernel",
# "–" where a row does not measure that stack. Progress goes to stderr.
# - bulk: `curl -o /dev/null http://10.7.0.2/bytes/N` from the kernel end of
#   the TUN to `ephemera up`, at MTU 1500 and 65535; kernel ceiling: the same
#   curl over a veth pair between two namespaces to `python3 -m http.server`
#   serving an N-byte file.
#   ephemera runs with its default TCP segmentation offload towards the
#   kernel, and once more at MTU 1500 with --no-offload.
# - smoltcp's example: smoltcp's own examples/benchmark.rs, built from the
#   crate source cargo resolved for ephemera (so the same smoltcp version;
#   the copy and its build live in $CARGO_TARGET_DIR/smoltcp-example, so a
#   rerun does not rebuild), run as `benchmark --tun tun0 reader` at MTU
#   1500 and 65535 (it takes the MTU from tun0): its smoltcp stack sends a
#   fixed amount (1 GB in 0.14.0) over one TCP connection to a kernel
#   thread of the same process reading it. It prints Gbps (1e9 bit/s); the
#   cell converts to MB/s (1e6 bytes/s), the unit of the curl cells. Not HTTP and not ephemera's workload: see
#   docs/performance-notes.md. If it cannot be built or run, its cell says
#   "not measured (why)" and the other rows are still produced.
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
REPO=$(cd "$(dirname "$0")/.." && pwd)
SMOL_DIR=$(realpath -m "${CARGO_TARGET_DIR:-$REPO/target}")/smoltcp-example

NS=eph-bench-$$
KA=eph-bench-ka-$$
KB=eph-bench-kb-$$
SM=eph-bench-sm-$$
TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for n in "$NS" "$KA" "$KB" "$SM"; do ip netns del "$n" 2>/dev/null || true; done
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

# ---- smoltcp's own benchmark example: build it first, outside any namespace ----
smoltcp_src() { # -> "VERSION DIR" of the smoltcp crate ephemera resolves to
    (cd "$REPO" && { cargo metadata --offline --format-version 1 2>/dev/null ||
        cargo metadata --format-version 1; }) | python3 -c '
import json, os, sys
try:
    d = json.load(sys.stdin)
    pkgs = {p["id"]: p for p in d["packages"]}
    root = next(n for n in d["resolve"]["nodes"] if n["id"] == d["resolve"]["root"])
    p = next(pkgs[x["pkg"]] for x in root["deps"] if pkgs[x["pkg"]]["name"] == "smoltcp")
except (ValueError, KeyError, StopIteration):
    sys.exit(1)
print(p["version"], os.path.dirname(p["manifest_path"]))'
}
SMOL_BIN=
SMOL_WHY=
SMOL_VER=
if ! command -v cargo >/dev/null; then
    SMOL_WHY="no cargo to build it"
elif ! read -r SMOL_VER SMOL_SRC < <(smoltcp_src) || [ ! -f "$SMOL_SRC/examples/benchmark.rs" ]; then
    SMOL_WHY="smoltcp crate source not found"
else
    echo "building smoltcp $SMOL_VER's benchmark example in $SMOL_DIR..." >&2
    mkdir -p "$SMOL_DIR"
    rm -rf "$SMOL_DIR/smoltcp-$SMOL_VER"
    # cp -a keeps the mtimes, so cargo's fingerprints hold and a rerun is cached.
    cp -a "$SMOL_SRC" "$SMOL_DIR/smoltcp-$SMOL_VER"
    # Default features, as smoltcp's README runs it; they include everything
    # the [[example]] section requires (std, medium-ip, phy-tuntap_interface,
    # proto-ipv4, socket-raw, socket-udp, ...) and socket-tcp. The crate's own
    # Cargo.lock pins the example's dependencies; offline first, then crates.io.
    build() { (cd "$SMOL_DIR/smoltcp-$SMOL_VER" &&
        CARGO_TARGET_DIR="$SMOL_DIR/target" cargo build --release --example benchmark "$@" >&2); }
    if build --offline || build; then
        SMOL_BIN=$SMOL_DIR/target/release/examples/benchmark
    else
        SMOL_WHY="build of smoltcp $SMOL_VER's example failed"
    fi
fi
SMOL_AMOUNT= # what the example sends, for the row's label
if [ -n "$SMOL_BIN" ]; then
    SMOL_AMOUNT=$(sed -n 's/^const AMOUNT: usize = \([0-9_]*\);.*/\1/p' \
        "$SMOL_DIR/smoltcp-$SMOL_VER/examples/benchmark.rs" | tr -d _) || true
fi

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
run_ephemera() { # mtu [extra flags...]
    local mtu=$1
    shift
    ip netns exec "$NS" "$BIN" up --tun tun0 --addr 10.7.0.2/24 --http 80 --mtu "$mtu" "$@" \
        >"$TMP/ephemera-$mtu.log" 2>&1 &
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
echo "ephemera bulk, MTU 1500, --no-offload..." >&2
run_ephemera 1500 --no-offload
E_BULK_PLAIN=$(bulk "$NS" "http://10.7.0.2/bytes/$N")
stop_ephemera
echo "ephemera bulk, MTU 65535..." >&2
run_ephemera 65535
E_BULK_JUMBO=$(bulk "$NS" "http://10.7.0.2/bytes/$N")
stop_ephemera

# ---- smoltcp's benchmark example over TUN ----
# The example (0.14.0) has its stack at 192.168.69.1/24 on the TUN and its
# kernel thread connect to it, so the kernel end is 192.168.69.100/24. Its
# TunTapInterface attaches to an existing tun0 and takes the MTU from it.
smoltcp_bulk() { # mtu -> "N MB/s (G Gbps)" or "not measured (why)"
    if [ -z "$SMOL_BIN" ]; then
        echo "not measured ($SMOL_WHY)"
        return
    fi
    if ! { ip netns add "$SM" &&
        ip -n "$SM" link set lo up &&
        ip -n "$SM" tuntap add name tun0 mode tun &&
        ip -n "$SM" link set tun0 mtu "$1" up &&
        ip -n "$SM" addr add 192.168.69.100/24 dev tun0; }; then
        echo "not measured (could not set up its TUN in a namespace)"
        return
    fi
    # RUST_LOG unset: the example logs at the level it names (trace would
    # format every packet). It loops until its reader finishes: bounded.
    local out
    out=$(ip netns exec "$SM" env -u RUST_LOG timeout 300 "$SMOL_BIN" --tun tun0 reader \
        2>"$TMP/smoltcp.log") || true
    ip netns del "$SM"
    if ! awk '/^throughput: [0-9.]+ Gbps/ {printf "%.0f MB/s (%s Gbps)", $2 * 125, $2; ok = 1}
              END {exit !ok}' <<<"$out"; then
        tail -n 5 "$TMP/smoltcp.log" >&2
        echo "not measured (smoltcp's example printed no throughput)"
    fi
}
echo "smoltcp's benchmark example, MTU 1500..." >&2
S_BULK=$(smoltcp_bulk 1500)
echo "smoltcp's benchmark example, MTU 65535..." >&2
S_BULK_JUMBO=$(smoltcp_bulk 65535)

amount="a fixed amount"
[ -n "$SMOL_AMOUNT" ] && amount="$SMOL_AMOUNT bytes"
what="ephemera and kernel: curl GET of $N bytes; smoltcp${SMOL_VER:+ $SMOL_VER}'s example: $amount to a kernel thread"
printf 'bulk, MTU 1500 (%s)\t%s\t%s\t%s\n' "$what" "$E_BULK" "$S_BULK" "$K_BULK"
printf 'bulk, MTU 65535 (same)\t%s\t%s\t%s\n' "$E_BULK_JUMBO" "$S_BULK_JUMBO" "$K_BULK_JUMBO"
printf 'bulk, MTU 1500, ephemera with --no-offload (each segment its own TUN write)\t%s\t–\t–\n' "$E_BULK_PLAIN"
IFS='|' read -r er e50 e99 <<<"$E_RATE"
IFS='|' read -r kr k50 k99 <<<"$K_RATE"
printf 'connections/s, ab -n %s -c %s, GET /bytes/100\t%s\t–\t%s\n' "$REQS" "$CONC" "$er" "$kr"
printf 'latency p50\t%s\t–\t%s\n' "$e50" "$k50"
printf 'latency p99\t%s\t–\t%s\n' "$e99" "$k99"
