#!/usr/bin/env bash
# End to end over TUN against the kernel's ceilings, all in one run, in
# network namespaces the script creates and deletes; it never touches the
# root namespace's links or sends traffic outside its namespaces.
#
#   benches/e2e.sh [path/to/ephemera] > e2e.tsv
#
# Needs root, iproute2, curl, nginx, iperf3, socat, ab (apache2-utils), wrk,
# python3 (the upload client; it also reads iperf3's and cargo's JSON), and
# cargo for smoltcp's own example. Progress goes to stderr; stdout is the
# table perf_report reads:
#
#   meta<TAB>KEY<TAB>VALUE
#   series<TAB>ID<TAB>UNIT<TAB>MEDIAN<TAB>MIN<TAB>MAX<TAB>SAMPLE SAMPLE ...
#   missing<TAB>ID<TAB>WHY            (only smoltcp's example may be missing)
#
# Settings (environment):
#   E2E_QUICK=1         CI's short mode: defaults become 1 run, 20 MB, 1000 requests,
#                       and no smoltcp example (its build takes minutes)
#   E2E_RUNS=5          samples per series; a series prints median, min and max
#   E2E_BYTES=200000000 bytes per bulk transfer (download, upload, relay)
#   E2E_REQUESTS=10000  requests per ab run
#   E2E_CONCURRENCY=16  ab -c
#   E2E_SMOLTCP=1       build and run smoltcp's example (0 in the short mode)
#   E2E_QUEUES=2        the shard count the scaling rows compare with --queues 1
#   E2E_WRK_SECONDS=5   length of each wrk run (1 in the short mode)
#   E2E_NICE=-10        the daemon's niceness in the scaling rows' second pass
#
# Topology. ephemera: one namespace with `ephemera up` on tun0 (stack
# 10.7.0.2, kernel end 10.7.0.1); every client and every kernel-side server
# of its rows runs in that namespace on the kernel end, so each byte crosses
# the TUN (twice for the relays). Kernel: two namespaces joined by a veth
# pair, KA 10.8.0.1 and KB 10.8.0.2, MTU 1500 unless a row says 65535.
# Servers are real ones: nginx from the distribution (one worker, sendfile
# on, access log off, its config in a temp dir, listening on one address),
# iperf3 -s, and socat with 1 MiB buffers (its 8 KiB default would cap it).
#
# Series (unit MB/s = 10^6 bytes/s unless noted; every client that can fail
# is checked, and a failure ends the script with the reason):
#   download.{eph,kernel}.{1500,65535}  curl GET of E2E_BYTES from ephemera's
#       --http /bytes/N, or from nginx over veth (KA -> KB)
#   download.eph.1500.no-offload        the same with ephemera --no-offload
#   download.smoltcp.{1500,65535}       smoltcp's examples/benchmark.rs (below)
#   iperf3.kernel.{up,down}.1500, iperf3.kernel.down.65535
#                                       iperf3 single stream over veth, -n
#                                       E2E_BYTES; "up" is client to server,
#                                       "down" is -R; the receiver's rate
#   upload.{eph,kernel}                 a client sends E2E_BYTES with
#       sendfile(2) (python3's os.sendfile, from the page cache, no copy in
#       the client) to ephemera's --discard, or to a socat sink over veth,
#       then waits for the sink to close (which it does after the last
#       byte); timed in the client, from before connect to the close
#   relay.{eph,kernel}.{up,down}        iperf3 through ephemera --forward, or
#       through a socat relay (TCP-LISTEN,fork -> TCP) in KA with client and
#       server in KB
#   socks.{eph,kernel}.{down,up}        curl GET of /bytes/N from nginx, and
#       curl PUT of E2E_BYTES to nginx's /sink (return 204; nginx reads and
#       discards the body), through ephemera --socks (--socks5-hostname) or
#       through the same socat relay as above
#   scale.q{1,Q}.{par,iperf3,wrk,one}  ephemera --queues 1 against --queues Q
#       (E2E_QUEUES), daemon restarted for each, the two alternating within
#       a run; rows in the order one, par, iperf3, wrk: one = a single
#       curl GET of E2E_BYTES (one flow) on the fresh daemon; par = 8
#       concurrent curl GETs of E2E_BYTES each from --http, all bytes over
#       the span from the first client's start to the last one's end
#       (process start-up included: a few ms of ~1 s); iperf3 = iperf3 -P 8
#       -t E2E_WRK_SECONDS through --forward, the receiver's sum; wrk = wrk
#       -t2 -c16 -H "Connection: close" on /bytes/100 for E2E_WRK_SECONDS
#       (requests/s, so connections/s)
#   scale.nice.q{1,Q}.*                the same rows with the daemon under
#       nice -n E2E_NICE, so that its threads win the CPU from the clients
#   scale.nginx{1,Q}.{par,wrk}         the kernel's own scaling with the same
#       clients: nginx over veth (KA -> KB) with 1 worker against Q workers,
#       alternating with the ephemera rows above
#   cpu.machine.scale.*, cpu.daemon.scale.q*.*  (%, 100 = one CPU busy for
#       the whole row) during each scaling row: every CPU's busy time from
#       /proc/stat (all processes, the kernel's softirqs included), and the
#       daemon's own (user + system) from /proc/PID/stat
#   rate.{eph,kernel} (connections/s), p50.*, p99.* (ms)
#                                       ab -n E2E_REQUESTS -c E2E_CONCURRENCY on
#       /bytes/100, a new connection per request, against ephemera's --http
#       and nginx over veth
#
# smoltcp's example: smoltcp's own examples/benchmark.rs, built from the
# crate source cargo resolved for ephemera (so the same smoltcp version; the
# copy and its build live in $CARGO_TARGET_DIR/smoltcp-example, so a rerun
# does not rebuild), run as `benchmark --tun tun0 reader` at MTU 1500 and
# 65535 (it takes the MTU from tun0): its smoltcp stack sends a fixed amount
# (1 GB in 0.14.0) over one TCP connection to a kernel thread of the same
# process. It prints Gbps; the series is in MB/s. Not HTTP and not
# ephemera's workload: see docs/performance-notes.md. If it cannot be built
# or run, its series is "missing" with the reason and the rest still runs.
set -euo pipefail
shopt -s inherit_errexit

BIN=${1:-${CARGO_TARGET_DIR:-target}/release/ephemera}
if [ "${E2E_QUICK:-0}" = 1 ]; then
    MODE=quick
    RUNS=${E2E_RUNS:-1}
    N=${E2E_BYTES:-20000000}
    REQS=${E2E_REQUESTS:-1000}
    SMOLTCP=${E2E_SMOLTCP:-0}
    WRK_SECS=${E2E_WRK_SECONDS:-1}
else
    MODE=full
    RUNS=${E2E_RUNS:-5}
    N=${E2E_BYTES:-200000000}
    REQS=${E2E_REQUESTS:-10000}
    SMOLTCP=${E2E_SMOLTCP:-1}
    WRK_SECS=${E2E_WRK_SECONDS:-5}
fi
QUEUES=${E2E_QUEUES:-2}
NICE=${E2E_NICE:--10}
CONC=${E2E_CONCURRENCY:-16}
for v in RUNS N REQS CONC QUEUES WRK_SECS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "e2e: $v must be a positive integer, not '${!v}'" >&2; exit 2; }
done
[[ $NICE =~ ^-?[0-9]+$ ]] && [ "$NICE" -ge -20 ] && [ "$NICE" -le 19 ] ||
    { echo "e2e: NICE must be a niceness from -20 to 19, not '$NICE'" >&2; exit 2; }

if [ "$(id -u)" != 0 ] || ! command -v ip >/dev/null; then
    echo "SKIP: e2e needs root and iproute2" >&2
    exit 0
fi
[ -x "$BIN" ] || { echo "e2e: no ephemera binary at $BIN (cargo build --release)" >&2; exit 1; }
missing=()
for t in curl:curl nginx:nginx iperf3:iperf3 socat:socat ab:apache2-utils wrk:wrk python3:python3; do
    command -v "${t%%:*}" >/dev/null || missing+=("${t#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "e2e: missing ${missing[*]} (Debian: apt-get install --no-install-recommends ${missing[*]})" >&2
    exit 1
fi
BIN=$(realpath "$BIN")
REPO=$(cd "$(dirname "$0")/.." && pwd)
SMOL_DIR=$(realpath -m "${CARGO_TARGET_DIR:-$REPO/target}")/smoltcp-example

NS=eph-bench-$$
KA=eph-bench-ka-$$
KB=eph-bench-kb-$$
SM=eph-bench-sm-$$
VA=eph-a-$$
VB=eph-b-$$
TMP=$(mktemp -d)
# nginx's worker drops to an unprivileged user and must read the files.
chmod 755 "$TMP"
mkdir -p "$TMP/samples"
PIDS=()

fail() {
    echo "e2e: FAILED: $*" >&2
    exit 1
}

# Every process the script starts lives in one of its namespaces, so the
# namespaces' pid lists find them all, also the children of a forking socat
# and nginx's worker.
cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    set +e
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    local n pids
    for n in "$NS" "$KA" "$KB" "$SM"; do
        pids=$(ip netns pids "$n" 2>/dev/null)
        [ -n "$pids" ] && kill $pids 2>/dev/null
    done
    for _ in $(seq 20); do
        pids=
        for n in "$NS" "$KA" "$KB" "$SM"; do pids+=$(ip netns pids "$n" 2>/dev/null); done
        [ -z "$pids" ] && break
        sleep 0.1
    done
    for n in "$NS" "$KA" "$KB" "$SM"; do
        pids=$(ip netns pids "$n" 2>/dev/null)
        [ -n "$pids" ] && kill -KILL $pids 2>/dev/null
    done
    wait 2>/dev/null
    for n in "$NS" "$KA" "$KB" "$SM"; do
        ip netns list | grep -qw "$n" && ip netns del "$n"
    done
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

record() { # id value: one sample of a series
    echo "$2" >> "$TMP/samples/$1"
}

# CPU time in clock ticks: every CPU's busy time from /proc/stat (user
# nice system irq softirq steal), or, given a pid, that process's user +
# system time (its threads included).
ticks() {
    if [ -z "${1:-}" ]; then
        awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat
    else
        # Fields after the ")" that ends the name: utime is the 12th, stime the 13th.
        sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'
    fi
}
with_cpu() { # id [pid] -- command...: runs the command (a client that records id), and
    # records cpu.machine.id, and with a pid cpu.daemon.id, in % of one CPU
    local id=$1 pid= m0 p0 t0 t1
    shift
    [ "$1" != -- ] && { pid=$1; shift; }
    shift
    m0=$(ticks)
    [ -n "$pid" ] && p0=$(ticks "$pid")
    t0=$(date +%s.%N)
    "$@"
    t1=$(date +%s.%N)
    record "cpu.machine.$id" "$(cpu_pct "$m0" "$(ticks)" "$t0" "$t1")"
    [ -n "$pid" ] && record "cpu.daemon.$id" "$(cpu_pct "$p0" "$(ticks "$pid")" "$t0" "$t1")"
    return 0
}
cpu_pct() { # ticks0 ticks1 t0 t1: the ticks between, in % of one CPU over t0..t1 (s)
    awk -v a="$1" -v b="$2" -v hz="$(getconf CLK_TCK)" -v s="$3" -v e="$4" \
        'BEGIN {printf "%.0f", (b - a) / hz / (e - s) * 100}'
}

wait_listen() { # ns addr port [log]: until something listens there
    for _ in $(seq 100); do
        ip netns exec "$1" ss -Hltn "sport = :$3" | grep -qF " $2:$3 " && return 0
        sleep 0.05
    done
    [ -n "${4:-}" ] && tail -n 5 "$4" >&2
    fail "nothing listens on $2:$3 in $1"
}

wait_http() { # ns url [log]: until the url answers; else the log's tail and fail
    for _ in $(seq 100); do
        ip netns exec "$1" curl -s -o /dev/null --max-time 1 "$2" && return 0
        sleep 0.1
    done
    [ -n "${3:-}" ] && tail -n 5 "$3" >&2
    fail "no HTTP answer from $2 in $1"
}

# ---- clients: each checks what it got and fails loudly ----

curl_get() { # id ns url [curl options...]: GET of N bytes, MB/s
    local id=$1 ns=$2 url=$3 out code size speed
    shift 3
    out=$(ip netns exec "$ns" curl -sS -o /dev/null --max-time 300 \
        -w '%{http_code} %{size_download} %{speed_download}' "$@" "$url") ||
        fail "$id: curl $* $url exited $?"
    read -r code size speed <<<"$out"
    [ "$code" = 200 ] && [ "$size" = "$N" ] ||
        fail "$id: curl $* $url: HTTP $code, $size of $N bytes"
    record "$id" "$(awk -v s="$speed" 'BEGIN {printf "%.0f", s / 1e6}')"
}

curl_put() { # id ns url [curl options...]: PUT of N bytes to a sink answering 204, MB/s
    local id=$1 ns=$2 url=$3 out code size speed
    shift 3
    # No Expect: 100-continue, so no round trip waits for it.
    out=$(ip netns exec "$ns" curl -sS -o /dev/null --max-time 300 -H 'Expect:' -T "$FILE" \
        -w '%{http_code} %{size_upload} %{speed_upload}' "$@" "$url") ||
        fail "$id: curl -T $* $url exited $?"
    read -r code size speed <<<"$out"
    [ "$code" = 204 ] && [ "$size" = "$N" ] ||
        fail "$id: curl -T $* $url: HTTP $code, sent $size of $N bytes"
    record "$id" "$(awk -v s="$speed" 'BEGIN {printf "%.0f", s / 1e6}')"
}

iperf3_run() { # id ns host port [iperf3 options...]: N bytes, receiver's MB/s
    # With IPERF3_SECONDS set, for that long instead of N bytes.
    local id=$1 ns=$2 host=$3 port=$4 rc=0 out n=$N limit=(-n "$N")
    shift 4
    if [ -n "${IPERF3_SECONDS:-}" ]; then
        n=0
        limit=(-t "$IPERF3_SECONDS")
    fi
    ip netns exec "$ns" timeout 300 iperf3 -c "$host" -p "$port" "${limit[@]}" -J "$@" \
        >"$TMP/iperf3.json" 2>"$TMP/iperf3.err" || rc=$?
    out=$(python3 - "$TMP/iperf3.json" "$n" <<'EOF'
import json, sys
try:
    d = json.load(open(sys.argv[1]))
except ValueError:
    print("no JSON from iperf3"); sys.exit(1)
if d.get("error"):
    print(d["error"]); sys.exit(1)
n = int(sys.argv[2])
s, r = d["end"]["sum_sent"], d["end"]["sum_received"]
# The receiver stops counting when the sender's end-of-test message
# arrives on the control connection, which can overtake the data still
# queued on the data connection (megabytes in a relay's buffers), so it
# counts less than was sent; its rate covers what it counted, over the
# time it counted.
if s["bytes"] < n or r["bytes"] <= 0 or r["seconds"] <= 0:
    print("sent %d and received %d of %d bytes" % (s["bytes"], r["bytes"], n)); sys.exit(1)
print("%.0f" % (r["bits_per_second"] / 8e6))
EOF
    ) || { cat "$TMP/iperf3.err" >&2; fail "$id: iperf3 -c $host -p $port $*: $out (exit $rc)"; }
    [ "$rc" = 0 ] || fail "$id: iperf3 -c $host -p $port $* exited $rc"
    record "$id" "$out"
}

upload() { # id ns host port: a sendfile(2) client sends N bytes, then waits for the sink's FIN; MB/s
    local id=$1 ns=$2 host=$3 port=$4 rc=0 out
    out=$(ip netns exec "$ns" timeout 300 python3 "$TMP/sendfile.py" "$host" "$port" "$FILE" 2>&1) ||
        rc=$?
    [ "$rc" = 0 ] || fail "$id: upload to $host:$port: ${out:-exit $rc}"
    [[ $out =~ ^[0-9]+$ ]] || fail "$id: upload to $host:$port: the client printed '$out'"
    record "$id" "$out"
}

ab_run() { # id ns url: connections/s, p50 and p99 in ms
    local id=$1 ns=$2 url=$3 rc=0 out
    ip netns exec "$ns" timeout 300 ab -q -n "$REQS" -c "$CONC" "$url" >"$TMP/ab.txt" 2>&1 || rc=$?
    [ "$rc" = 0 ] || { tail -n 5 "$TMP/ab.txt" >&2; fail "$id: ab on $url exited $rc"; }
    out=$(awk -v want="$REQS" '
        /^Complete requests:/ {done = $3}
        /^Failed requests:/ {failed = $3}
        /^Non-2xx responses:/ {non2xx = $3}
        /^Requests per second:/ {r = $4}
        /^  50%/ {p50 = $2}
        /^  99%/ {p99 = $2}
        END {
            if (done != want || failed != 0 || non2xx != "" || r == "" || p99 == "") {
                printf "%s of %s requests complete, %s failed, %s non-2xx", done, want, failed, non2xx + 0
                exit 1
            }
            printf "%.0f %s %s", r, p50, p99
        }' "$TMP/ab.txt") || fail "$id: ab on $url: $out"
    read -r r p50 p99 <<<"$out"
    record "rate.$id" "$r"
    record "p50.$id" "$p50"
    record "p99.$id" "$p99"
}

par_get() { # id ns url count: count concurrent curl GETs of url/N; all bytes over the span, MB/s
    # The span runs from the first client's start to the last one's end,
    # so clients that start late or finish early do not inflate the sum.
    local id=$1 ns=$2 url=$3 count=$4 i code size t0 t1 pids=()
    t0=$(date +%s.%N)
    for i in $(seq "$count"); do
        ip netns exec "$ns" curl -sS -o /dev/null --max-time 300 \
            -w '%{http_code} %{size_download}\n' \
            "$url/$N" >"$TMP/par.$i" 2>&1 &
        pids+=($!)
    done
    for i in "${!pids[@]}"; do
        wait "${pids[$i]}" || fail "$id: curl $url/$N (client $((i + 1)) of $count) exited $?"
    done
    t1=$(date +%s.%N)
    for i in $(seq "$count"); do
        read -r code size <"$TMP/par.$i"
        [ "$code" = 200 ] && [ "$size" = "$N" ] ||
            fail "$id: curl $url/$N (client $i of $count): HTTP $code, $size of $N bytes"
    done
    record "$id" "$(awk -v b=$((N * count)) -v s="$t0" -v e="$t1" 'BEGIN {printf "%.0f", b / (e - s) / 1e6}')"
}

wrk_run() { # id ns url: wrk -t2 -c16 with a new connection per request; requests/s
    local id=$1 ns=$2 url=$3 rc=0 out
    ip netns exec "$ns" timeout 120 wrk -t2 -c16 -d"${WRK_SECS}s" -H 'Connection: close' "$url" \
        >"$TMP/wrk.txt" 2>&1 || rc=$?
    [ "$rc" = 0 ] || { tail -n 5 "$TMP/wrk.txt" >&2; fail "$id: wrk on $url exited $rc"; }
    # Every request must have been answered with a 2xx: no socket errors
    # (connect, read, write, timeout) and no other status.
    out=$(awk '
        /Socket errors:/ {errors = $0}
        /Non-2xx or 3xx responses:/ {non2xx = $NF}
        /^Requests\/sec:/ {r = $2}
        / requests in / {n = $1}
        END {
            if (errors != "" || non2xx != "" || r == "" || n == 0) {
                printf "%s requests, %s non-2xx, %s", n, non2xx + 0, errors
                exit 1
            }
            printf "%.0f", r
        }' "$TMP/wrk.txt") || fail "$id: wrk on $url: $out"
    record "$id" "$out"
}

# ---- servers ----

start_nginx() { # ns name addr:port [workers]: one worker unless given, sendfile, serving $TMP/www, /sink discards
    local dir=$TMP/nginx-$2
    mkdir -p "$dir"
    cat >"$dir/nginx.conf" <<EOF
worker_processes ${4:-1};
pid $dir/nginx.pid;
error_log $dir/error.log;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    server {
        listen $3;
        root $TMP/www;
        client_max_body_size 0;
        # Answers at once and reads the body to the end, throwing it away.
        location = /sink { return 204; }
    }
}
EOF
    ip netns exec "$1" nginx -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log" -g 'daemon off;' \
        >"$dir/stdout.log" 2>&1 &
    PIDS+=($!)
    wait_http "$1" "http://$3/bytes/100" "$dir/error.log"
}

start_bg() { # ns addr port command...: a server, ready when it listens
    local ns=$1 addr=$2 port=$3
    shift 3
    ip netns exec "$ns" "$@" >"$TMP/bg-$ns-$port.log" 2>&1 &
    PIDS+=($!)
    wait_listen "$ns" "$addr" "$port" "$TMP/bg-$ns-$port.log"
}

stop_pid() { # pid [signal]: stop a process this script started, and forget it
    local p keep=()
    kill "-${2:-TERM}" "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

run_ephemera() { # mtu [extra flags...]
    local mtu=$1
    shift
    # Its own control socket: the default path is per TUN name, and a
    # daemon on another namespace's tun0 (a test) would hold it.
    # EPH_NICE: its priority (nice(1)); nice execs the daemon, so $EPID is its pid.
    ip netns exec "$NS" nice -n "${EPH_NICE:-0}" "$BIN" up --tun tun0 --addr 10.7.0.2/24 --http 80 --mtu "$mtu" \
        --control "$TMP/control.sock" "$@" \
        >"$TMP/ephemera-$mtu.log" 2>&1 &
    EPID=$!
    PIDS+=($EPID)
    wait_http "$NS" http://10.7.0.2/bytes/100 "$TMP/ephemera-$mtu.log"
}
stop_ephemera() {
    # SIGINT: the daemon closes its connections and exits 0.
    stop_pid "$EPID" INT
}

# ---- smoltcp's benchmark example: build it first, outside any namespace ----
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
if [ "$SMOLTCP" != 1 ]; then
    SMOL_WHY="skipped: E2E_SMOLTCP=$SMOLTCP"
elif ! command -v cargo >/dev/null; then
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

# ---- files served and sent ----
mkdir -p "$TMP/www/bytes"
FILE=$TMP/www/bytes/$N
head -c "$N" /dev/zero >"$FILE"
head -c 100 /dev/zero >"$TMP/www/bytes/100"
chmod -R a+rX "$TMP/www"
# The upload client: the file goes from the page cache to the socket with
# sendfile(2), as nginx sends (`sendfile on`), so the client never copies
# a byte and the receiving stack is what is measured. Its clock starts
# before connect and stops when the sink's close arrives, which comes only
# after the sink has read the last byte: delivery, not queueing. Prints
# MB/s; any error (refused, reset, a short send, 60 s without progress)
# exits non-zero with the reason.
cat >"$TMP/sendfile.py" <<'EOF'
import os, socket, struct, sys, time
host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
size = os.path.getsize(path)
with open(path, "rb") as f:
    t0 = time.monotonic_ns()
    s = socket.create_connection((host, port), timeout=60)
    # Blocking from here (Python's own timeout makes the socket
    # non-blocking, and os.sendfile would stop at EAGAIN); the kernel
    # gives up after 60 s without progress instead.
    s.settimeout(None)
    limit = struct.pack("ll", 60, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
    sent = 0
    while sent < size:
        n = os.sendfile(s.fileno(), f.fileno(), sent, size - sent)
        if n == 0:
            sys.exit("the file ended after %d of %d bytes" % (sent, size))
        sent += n
    s.shutdown(socket.SHUT_WR)
    if s.recv(1):
        sys.exit("the sink sent data")
    t1 = time.monotonic_ns()
print("%.0f" % (size * 1e3 / (t1 - t0)))
EOF

# ---- kernel: KA <-veth-> KB, and its servers ----
ip netns add "$KA"
ip netns add "$KB"
ip link add "$VA" netns "$KA" type veth peer name "$VB" netns "$KB"
ip -n "$KA" addr add 10.8.0.1/24 dev "$VA"
ip -n "$KB" addr add 10.8.0.2/24 dev "$VB"
for n in "$KA" "$KB"; do ip -n "$n" link set lo up; done
ip -n "$KA" link set "$VA" up
ip -n "$KB" link set "$VB" up
start_nginx "$KB" kernel 10.8.0.2:80
[ "$QUEUES" = 1 ] || start_nginx "$KB" kernel-workers 10.8.0.2:8082 "$QUEUES"
start_bg "$KB" 10.8.0.2 5201 iperf3 -s -B 10.8.0.2 -p 5201
start_bg "$KB" 10.8.0.2 9 socat -b 1048576 -u TCP-LISTEN:9,bind=10.8.0.2,reuseaddr,fork OPEN:/dev/null,wronly
# The kernel's relays, in KA between a client and a server in KB, as
# ephemera relays between two kernel sockets on the same side of its TUN.
start_bg "$KA" 10.8.0.1 5202 socat -b 1048576 TCP-LISTEN:5202,bind=10.8.0.1,reuseaddr,fork TCP:10.8.0.2:5201
start_bg "$KA" 10.8.0.1 8081 socat -b 1048576 TCP-LISTEN:8081,bind=10.8.0.1,reuseaddr,fork TCP:10.8.0.2:80

# ---- ephemera: its namespace, the daemon with every service, and the
# kernel-side servers its relays reach (they need the TUN's address) ----
ip netns add "$NS"
ip -n "$NS" link set lo up
run_ephemera 1500 --discard 9 --socks 1080 --forward 5202=10.7.0.1:5201
start_nginx "$NS" eph 10.7.0.1:8080
NS_NGINX=$!
start_bg "$NS" 10.7.0.1 5201 iperf3 -s -B 10.7.0.1 -p 5201
NS_IPERF3=$!

show() { # id...: the last sample of each, for progress
    local id out=
    for id in "$@"; do out+=" $id $(tail -n 1 "$TMP/samples/$id")"; done
    echo " ${out# }" >&2
}

# Kernel and ephemera alternate within each run, so a change in the
# machine's load lands on both.
for r in $(seq "$RUNS"); do
    echo "run $r/$RUNS, MTU 1500 ($MODE mode, $N bytes per transfer)..." >&2
    curl_get download.kernel.1500 "$KA" "http://10.8.0.2/bytes/$N"
    curl_get download.eph.1500 "$NS" "http://10.7.0.2/bytes/$N"
    show download.kernel.1500 download.eph.1500
    iperf3_run iperf3.kernel.up.1500 "$KA" 10.8.0.2 5201
    iperf3_run iperf3.kernel.down.1500 "$KA" 10.8.0.2 5201 -R
    show iperf3.kernel.up.1500 iperf3.kernel.down.1500
    upload upload.kernel "$KA" 10.8.0.2 9
    upload upload.eph "$NS" 10.7.0.2 9
    show upload.kernel upload.eph
    iperf3_run relay.kernel.up "$KB" 10.8.0.1 5202
    iperf3_run relay.eph.up "$NS" 10.7.0.2 5202
    iperf3_run relay.kernel.down "$KB" 10.8.0.1 5202 -R
    iperf3_run relay.eph.down "$NS" 10.7.0.2 5202 -R
    show relay.kernel.up relay.eph.up relay.kernel.down relay.eph.down
    curl_get socks.kernel.down "$KB" "http://10.8.0.1:8081/bytes/$N"
    curl_get socks.eph.down "$NS" "http://10.7.0.1:8080/bytes/$N" --socks5-hostname 10.7.0.2:1080
    curl_put socks.kernel.up "$KB" "http://10.8.0.1:8081/sink"
    curl_put socks.eph.up "$NS" "http://10.7.0.1:8080/sink" --socks5-hostname 10.7.0.2:1080
    show socks.kernel.down socks.eph.down socks.kernel.up socks.eph.up
    ab_run kernel "$KA" http://10.8.0.2/bytes/100
    ab_run eph "$NS" http://10.7.0.2/bytes/100
    show rate.kernel p99.kernel rate.eph p99.eph
done
# The TUN's address goes with the daemon: stop what listens on it first.
stop_pid "$NS_NGINX"
stop_pid "$NS_IPERF3"
stop_ephemera

echo "ephemera --no-offload, MTU 1500..." >&2
run_ephemera 1500 --no-offload
for r in $(seq "$RUNS"); do
    curl_get download.eph.1500.no-offload "$NS" "http://10.7.0.2/bytes/$N"
    show download.eph.1500.no-offload
done
stop_ephemera

# ---- scaling across queues: --queues 1 against --queues QUEUES, each
# run restarting the daemon for both, so a change in load lands on both ----
echo "ephemera --queues 1 against --queues $QUEUES, MTU 1500..." >&2
for r in $(seq "$RUNS"); do
    for q in 1 "$QUEUES"; do
        # Each at the default priority, then under `nice -n NICE`.
        for pass in scale scale.nice; do
            nice=0
            [ "$pass" = scale ] || nice=$NICE
            EPH_NICE=$nice run_ephemera 1500 --queues "$q" --forward 5202=10.7.0.1:5201
            start_bg "$NS" 10.7.0.1 5201 iperf3 -s -B 10.7.0.1 -p 5201
            NS_IPERF3=$!
            id=$pass.q$q
            # One flow first, on the fresh daemon: the rows after it leave
            # connections behind (wrk, last, some 200,000 in TIME-WAIT).
            with_cpu "$id.one" "$EPID" -- curl_get "$id.one" "$NS" "http://10.7.0.2/bytes/$N"
            with_cpu "$id.par" "$EPID" -- par_get "$id.par" "$NS" http://10.7.0.2/bytes 8
            # For a time, not -n: with 8 streams the relay holds up to 16 MiB
            # that the receiver stops counting at the end (see iperf3_run).
            IPERF3_SECONDS=$WRK_SECS with_cpu "$id.iperf3" "$EPID" -- \
                iperf3_run "$id.iperf3" "$NS" 10.7.0.2 5202 -P 8
            with_cpu "$id.wrk" "$EPID" -- wrk_run "$id.wrk" "$NS" http://10.7.0.2/bytes/100
            show "$id.one" "$id.par" "$id.iperf3" "$id.wrk"
            stop_pid "$NS_IPERF3"
            stop_ephemera
        done
    done
    # The kernel's own scaling with the same clients: nginx with 1 worker
    # (port 80, as above) against QUEUES workers (port 8082).
    for w in 1 "$QUEUES"; do
        port=80
        [ "$w" = 1 ] || port=8082
        with_cpu "scale.nginx$w.par" -- par_get "scale.nginx$w.par" "$KA" "http://10.8.0.2:$port/bytes" 8
        with_cpu "scale.nginx$w.wrk" -- wrk_run "scale.nginx$w.wrk" "$KA" "http://10.8.0.2:$port/bytes/100"
        show "scale.nginx$w.par" "scale.nginx$w.wrk"
    done
done

echo "MTU 65535..." >&2
ip -n "$KA" link set "$VA" mtu 65535
ip -n "$KB" link set "$VB" mtu 65535
run_ephemera 65535
for r in $(seq "$RUNS"); do
    curl_get download.kernel.65535 "$KA" "http://10.8.0.2/bytes/$N"
    curl_get download.eph.65535 "$NS" "http://10.7.0.2/bytes/$N"
    iperf3_run iperf3.kernel.down.65535 "$KA" 10.8.0.2 5201 -R
    show download.kernel.65535 download.eph.65535 iperf3.kernel.down.65535
done
stop_ephemera

# ---- smoltcp's benchmark example over TUN ----
# The example (0.14.0) has its stack at 192.168.69.1/24 on the TUN and its
# kernel thread connect to it, so the kernel end is 192.168.69.100/24. Its
# TunTapInterface attaches to an existing tun0 and takes the MTU from it.
SMOL_MISSING=()
smoltcp_bulk() { # mtu: one sample of download.smoltcp.MTU, or a reason it is missing
    local id=download.smoltcp.$1 out
    if [ -z "$SMOL_BIN" ]; then
        SMOL_MISSING+=("$id|$SMOL_WHY")
        return
    fi
    if ! { ip netns add "$SM" &&
        ip -n "$SM" link set lo up &&
        ip -n "$SM" tuntap add name tun0 mode tun &&
        ip -n "$SM" link set tun0 mtu "$1" up &&
        ip -n "$SM" addr add 192.168.69.100/24 dev tun0; }; then
        ip netns del "$SM" 2>/dev/null || true
        SMOL_MISSING+=("$id|could not set up its TUN in a namespace")
        return
    fi
    # RUST_LOG unset: the example logs at the level it names (trace would
    # format every packet). Its client thread connects as the example
    # starts, racing the listen of its main loop; when the SYN wins, the
    # stack answers RST, the thread panics, and the main loop would spin
    # until the timeout. So a panic ends the attempt, and there are five.
    local attempt pid
    out=
    for attempt in 1 2 3 4 5; do
        ip netns exec "$SM" env -u RUST_LOG timeout 300 "$SMOL_BIN" --tun tun0 reader \
            >"$TMP/smoltcp.out" 2>"$TMP/smoltcp.log" &
        pid=$!
        PIDS+=($pid)
        while kill -0 "$pid" 2>/dev/null && ! grep -q panicked "$TMP/smoltcp.log"; do
            sleep 0.2
        done
        stop_pid "$pid"
        out=$(awk '/^throughput: [0-9.]+ Gbps/ {printf "%.0f", $2 * 125}' "$TMP/smoltcp.out")
        [ -n "$out" ] && break
        echo "smoltcp's example, attempt $attempt: $(grep -m1 panicked "$TMP/smoltcp.log" || echo "no throughput")" >&2
    done
    ip netns del "$SM"
    if [ -z "$out" ]; then
        tail -n 5 "$TMP/smoltcp.log" >&2
        SMOL_MISSING+=("$id|smoltcp's example printed no throughput in five attempts")
        return
    fi
    record "$id" "$out"
    show "$id"
}
for mtu in 1500 65535; do
    [ -n "$SMOL_BIN" ] && echo "smoltcp's benchmark example, MTU $mtu..." >&2
    for r in $(seq "$RUNS"); do
        smoltcp_bulk "$mtu"
        # One reason is enough: a failure repeats.
        [ -f "$TMP/samples/download.smoltcp.$mtu" ] || break
    done
done

# ---- the table ----
printf 'meta\tmode\t%s\n' "$MODE"
printf 'meta\truns\t%s\n' "$RUNS"
printf 'meta\tbytes\t%s\n' "$N"
printf 'meta\trequests\t%s\n' "$REQS"
printf 'meta\tconcurrency\t%s\n' "$CONC"
printf 'meta\tqueues\t%s\n' "$QUEUES"
printf 'meta\tnice\t%s\n' "$NICE"
printf 'meta\twrk_seconds\t%s\n' "$WRK_SECS"
printf 'meta\twrk\t%s\n' "$(wrk --version 2>&1 | sed -n '1s/^wrk \([^ ]*\).*/\1/p')"
printf 'meta\tnginx\t%s\n' "$(nginx -v 2>&1 | sed 's/^nginx version: //')"
printf 'meta\tiperf3\t%s\n' "$(iperf3 --version | sed -n '1s/^iperf \([^ ]*\).*/\1/p')"
printf 'meta\tsocat\t%s\n' "$(socat -V | sed -n 's/^socat version \([^ ]*\).*/\1/p')"
printf 'meta\tpython3\t%s\n' "$(python3 -c 'import platform; print(platform.python_version())')"
[ -n "$SMOL_VER" ] && printf 'meta\tsmoltcp\t%s\n' "$SMOL_VER"
[ -n "$SMOL_AMOUNT" ] && printf 'meta\tsmoltcp_amount\t%s\n' "$SMOL_AMOUNT"
for f in "$TMP"/samples/*; do
    id=${f##*/}
    case $id in
    rate.* | scale.*.wrk) unit=conn/s ;;
    p50.* | p99.*) unit=ms ;;
    cpu.*) unit=% ;;
    *) unit=MB/s ;;
    esac
    # Samples in the order they were taken; median, min and max from a sorted copy.
    sort -g "$f" | awk -v id="$id" -v unit="$unit" -v samples="$(paste -sd ' ' "$f")" '
        {v[NR] = $1}
        END {
            m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            printf "series\t%s\t%s\t%g\t%g\t%g\t%s\n", id, unit, m, v[1], v[NR], samples
        }'
done
for m in "${SMOL_MISSING[@]}"; do
    printf 'missing\t%s\t%s\n' "${m%%|*}" "${m#*|}"
done
