#!/usr/bin/env bash
# benches/syscalls.sh TARGET LABEL: syscalls by name (strace -c) and context
# switches (perf stat, /proc voluntary_ctxt_switches) of one proxy under a
# fixed wsbench handshake load and a fixed 1 KiB echo load; divide by what
# wsbench reports with benches/syscalls_table.py.
#
# TARGET: `haproxy` (the shared bench/anchors/haproxy.cfg with its ports
# moved to PORTS) or the path of a release gateway binary, started as
# anchors.sh starts it. Needs the shared bench's wsbench built (anchors.sh
# builds it into /tmp/wsbench-target), strace and perf. Everything on
# 127.0.0.1: echo backends on BASE+1 and BASE+2, HAProxy on BASE+12, the
# gateway on BASE+13 (BASE=19100 by default, away from anchors.sh's 19001-19013).
#
#   BENCH=/path/to/shared/bench benches/syscalls.sh haproxy haproxy
#   benches/syscalls.sh target/release/examples/gateway after
#   python3 benches/syscalls_table.py haproxy after
set -uo pipefail
T=$1; LABEL=$2
BASE=${BASE:-19100}
BENCH=${BENCH:-../shared/bench}
OUT=${OUT:-/tmp/wsproxy-syscalls}
WSB=${WSB:-/tmp/wsbench-target/release/wsbench}
DUR=${DUR:-8}
D=$OUT/$LABEL; mkdir -p "$D"
B1=$((BASE + 1)); B2=$((BASE + 2))
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
    sleep 0.5
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)"
for p in $B1 $B2; do
    "$WSB" echo-server --listen "127.0.0.1:$p" --threads 1 >"$D/echo-$p.log" 2>&1 &
    PIDS+=($!)
done
for p in $B1 $B2; do
    timeout 30 "$WSB" probe --url "ws://127.0.0.1:$p/" --timeout 15 >/dev/null || { echo "backend $p down"; exit 1; }
done
if [[ $T == haproxy ]]; then
    [[ -f $BENCH/anchors/haproxy.cfg ]] || { echo "no $BENCH/anchors/haproxy.cfg: set BENCH"; exit 1; }
    PORT=$((BASE + 12))
    sed -e "s/19012/$PORT/; s/19001/$B1/; s/19002/$B2/; s#/tmp/wsproxy-anchors/haproxy.pid#$D/haproxy.pid#" \
        "$BENCH/anchors/haproxy.cfg" >"$D/haproxy.cfg"
    haproxy -db -f "$D/haproxy.cfg" >"$D/proxy.log" 2>&1 &
    PID=$!
else
    PORT=$((BASE + 13))
    "$T" --listen "127.0.0.1:$PORT" --upstream "127.0.0.1:$B1" --upstream "127.0.0.1:$B2" \
        ${GW_ARGS:-} >"$D/proxy.log" 2>&1 &
    PID=$!
fi
PIDS+=($PID)
URL=ws://127.0.0.1:$PORT/
timeout 30 "$WSB" probe --url "$URL" --timeout 20 >/dev/null || { echo "proxy down"; cat "$D/proxy.log"; exit 1; }

load() {
    case $1 in
        hs) "$WSB" handshakes --concurrency 50 --duration "$DUR" --url "$URL" ;;
        tp1k) "$WSB" throughput --conns 50 --size 1024 --window 8 --duration "$DUR" --url "$URL" ;;
    esac
}
switches() {       # voluntary and involuntary context switches, all threads
    cat /proc/"$PID"/task/*/status |
        awk '/^voluntary_ctxt/ {v += $2} /^nonvoluntary_ctxt/ {n += $2} END {print v, n}'
}
for test in hs tp1k; do
    # Every thread of the proxy, the gateway's workers included.
    strace -f -c -o "$D/$test.strace" -p "$(ls /proc/"$PID"/task | paste -sd,)" 2>"$D/$test.strace.err" &
    S=$!
    sleep 1
    load $test >"$D/$test.strace.json" 2>"$D/$test.strace.log"
    kill -INT $S; wait $S
    sleep 1
    # Context switches in a second run without strace.
    switches >"$D/$test.ctx0"
    perf stat -e context-switches,cpu-migrations,task-clock -p "$PID" -o "$D/$test.perf" -- sleep $((DUR + 2)) &
    P=$!
    sleep 0.5
    load $test >"$D/$test.perf.json" 2>"$D/$test.perf.log"
    wait $P
    switches >"$D/$test.ctx1"
    sleep 1
done
echo "$LABEL: $D"
