#!/usr/bin/env bash
# benches/profile.sh TARGET LABEL [LOAD...]: where one proxy's CPU goes under
# the fixed wsbench loads of syscalls.sh (LOAD: hs, tp1k; default both),
# sampled with `perf record` (no call graphs: frame pointers are off) and
# summed per operation with benches/profile_table.py, kernel and user apart.
#
# TARGET: `haproxy`, `naive` (the shared bench's naive-proxy, built by
# anchors.sh into /tmp/naive-proxy-target) or the path of a release gateway
# binary; GW_ARGS adds flags to the gateway. Same ports and needs as
# syscalls.sh (wsbench built, perf installed), everything on 127.0.0.1.
#
#   benches/profile.sh haproxy haproxy
#   GW_ARGS="--workers 1" benches/profile.sh target/release/examples/gateway gw
#   python3 benches/profile_table.py /tmp/wsproxy-profile/haproxy-hs /tmp/wsproxy-profile/gw-hs
set -uo pipefail
T=$1; LABEL=$2; shift 2
LOADS=("${@:-hs tp1k}")
BASE=${BASE:-19100}
BENCH=${BENCH:-../shared/bench}
OUT=${OUT:-/tmp/wsproxy-profile}
WSB=${WSB:-/tmp/wsbench-target/release/wsbench}
NAIVE=${NAIVE:-/tmp/naive-proxy-target/release/naive-proxy}
DUR=${DUR:-10}
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
mkdir -p "$OUT"
for p in $B1 $B2; do
    "$WSB" echo-server --listen "127.0.0.1:$p" --threads 1 >/dev/null 2>&1 &
    PIDS+=($!)
done
for p in $B1 $B2; do
    timeout 30 "$WSB" probe --url "ws://127.0.0.1:$p/" --timeout 15 >/dev/null || { echo "backend $p down"; exit 1; }
done
case $T in
    haproxy)
        [[ -f $BENCH/anchors/haproxy.cfg ]] || { echo "no $BENCH/anchors/haproxy.cfg: set BENCH"; exit 1; }
        PORT=$((BASE + 12))
        sed -e "s/19012/$PORT/; s/19001/$B1/; s/19002/$B2/; s#/tmp/wsproxy-anchors/haproxy.pid#$OUT/haproxy.pid#" \
            "$BENCH/anchors/haproxy.cfg" >"$OUT/haproxy.cfg"
        haproxy -db -f "$OUT/haproxy.cfg" >"$OUT/$LABEL.log" 2>&1 &
        PID=$! ;;
    naive)
        PORT=$((BASE + 10))
        "$NAIVE" --listen "127.0.0.1:$PORT" --upstream "127.0.0.1:$B1" --upstream "127.0.0.1:$B2" >"$OUT/$LABEL.log" 2>&1 &
        PID=$! ;;
    *)
        PORT=$((BASE + 13))
        "$T" --listen "127.0.0.1:$PORT" --upstream "127.0.0.1:$B1" --upstream "127.0.0.1:$B2" \
            ${GW_ARGS:-} >"$OUT/$LABEL.log" 2>&1 &
        PID=$! ;;
esac
PIDS+=($PID)
URL=ws://127.0.0.1:$PORT/
timeout 30 "$WSB" probe --url "$URL" --timeout 20 >/dev/null || { echo "proxy down"; cat "$OUT/$LABEL.log"; exit 1; }
for load in ${LOADS[*]}; do
    D=$OUT/$LABEL-$load; mkdir -p "$D"
    case $load in
        hs) cmd=("$WSB" handshakes --concurrency 50 --duration "$DUR" --url "$URL") ;;
        tp1k) cmd=("$WSB" throughput --conns 50 --size 1024 --window 8 --duration "$DUR" --url "$URL") ;;
        *) echo "unknown load $load"; exit 2 ;;
    esac
    # Sample the middle of the load: it runs DUR s, perf DUR - 2 s from 1 s in.
    (sleep 1; perf record -q -F 4000 -p "$PID" -o "$D/perf.data" -- sleep $((DUR - 2)) 2>"$D/perf.err") &
    R=$!
    "${cmd[@]}" >"$D/load.json" 2>"$D/load.log"
    wait $R
    echo "$((DUR - 2))" >"$D/seconds"
    echo "$LABEL $load: $D"
done
