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
OUT=${OUT:-/tmp/wsproxy-syscalls}
DUR=${DUR:-8}
D=$OUT/$LABEL; mkdir -p "$D"
. "$(dirname "${BASH_SOURCE[0]}")/targets.sh"
start_backends "$D"
start_proxy "$T" "$D" "$D/proxy.log"

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
