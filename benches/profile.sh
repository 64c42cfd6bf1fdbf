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
OUT=${OUT:-/tmp/wsproxy-profile}
DUR=${DUR:-10}
mkdir -p "$OUT"
. "$(dirname "${BASH_SOURCE[0]}")/targets.sh"
start_backends "$OUT"
start_proxy "$T" "$OUT" "$OUT/$LABEL.log"
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
