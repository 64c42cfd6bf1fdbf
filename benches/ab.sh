#!/usr/bin/env bash
# benches/ab.sh A B [ROUNDS]: paired A/B of two gateway binaries, for changes
# too small for the anchors harness to see through the machine's swings.
# Both gateways run side by side against the same two echo backends; each
# round runs the same wsbench load (LOAD=hs: handshakes, concurrency 50;
# LOAD=tp1k: 1 KiB echoes, 50 connections x 8 in flight; LOAD=tp64k: 64 KiB
# echoes, 10 connections x 8 in flight, as anchors.sh) for DUR s against
# A then B, or B then A on odd rounds, reading each gateway's CPU
# (utime+stime from /proc) around its load. Prints every round's CPU per
# operation and B/A, then the median, mean and spread of B/A: a shared
# machine drifts, but two loads seconds apart drift alike.
#
#   benches/ab.sh /tmp/gw-before target/release/examples/gateway 14
#   LOAD=tp1k GW_ARGS="--workers 1" benches/ab.sh /tmp/gw-before /tmp/gw-after
#
# A may also be `haproxy` or `naive` (targets.sh starts them; BENCH names
# the shared bench for HAProxy's configuration), for the gateway beside
# them in the same rounds: BENCH=../shared/bench benches/ab.sh haproxy
# target/release/examples/gateway 16. Keep them as A: as B their port would
# be one up, on a gateway A's.
#
# Needs the shared bench's wsbench (anchors.sh builds it) and jq; ports
# BASE+1, BASE+2 (backends), BASE+13 (A), BASE+14 (B) on 127.0.0.1.
set -uo pipefail
A=$1; B=$2; ROUNDS=${3:-14}
LOAD=${LOAD:-hs}
DUR=${DUR:-5}
OUT=${OUT:-/tmp/wsproxy-ab}; mkdir -p "$OUT"
. "$(dirname "${BASH_SOURCE[0]}")/targets.sh"
start_backends "$OUT"
start_proxy "$A" "$OUT" "$OUT/a.log"; PID_A=$PID; URL_A=$URL
BASE=$((BASE + 1)) start_proxy "$B" "$OUT" "$OUT/b.log"; PID_B=$PID; URL_B=$URL
HZ=$(getconf CLK_TCK)

ticks() { local f; read -r -a f <"/proc/$1/stat"; echo $(( f[13] + f[14] )); }
per_op() {         # per_op PID URL: ns of the gateway's CPU per operation
    local t0 t1 ops
    t0=$(ticks "$1")
    case $LOAD in
        hs) "$WSB" handshakes --concurrency 50 --duration "$DUR" --url "$2" ;;
        tp1k) "$WSB" throughput --conns 50 --size 1024 --window 8 --duration "$DUR" --url "$2" ;;
        tp64k) "$WSB" throughput --conns 10 --size 65536 --window 8 --duration "$DUR" --url "$2" ;;
    esac >"$OUT/load.json" 2>"$OUT/load.log"
    t1=$(ticks "$1")
    ops=$(grep '^{' "$OUT/load.json" | tail -n 1 | jq '(.ok // .messages) - .errors')
    awk -v t=$((t1 - t0)) -v hz="$HZ" -v n="$ops" 'BEGIN { printf "%.0f", t * 1e9 / hz / n }'
}
: >"$OUT/rounds"
for ((i = 0; i < ROUNDS; i++)); do
    if ((i % 2 == 0)); then a=$(per_op "$PID_A" "$URL_A"); b=$(per_op "$PID_B" "$URL_B")
    else b=$(per_op "$PID_B" "$URL_B"); a=$(per_op "$PID_A" "$URL_A"); fi
    echo "$a $b" | tee -a "$OUT/rounds" | awk -v i="$i" '{ printf "round %2d: A %d ns, B %d ns, B/A %.3f\n", i, $1, $2, $2 / $1 }'
done
# The geometric mean weighs both orders alike (even ROUNDS): on this
# machine the load that follows the same gateway's ran dearer.
sort -n -k3 <(awk '{ print $1, $2, $2 / $1 }' "$OUT/rounds") | awk '
    { r[NR] = $3; l += log($3); q += log($3) ^ 2; a += $1; b += $2 }
    END {
        m = (NR % 2) ? r[(NR + 1) / 2] : (r[NR / 2] + r[NR / 2 + 1]) / 2
        printf "B/A over %d rounds: median %.3f, geometric mean %.3f, sd %.1f %%; mean CPU per op A %.0f ns, B %.0f ns\n",
            NR, m, exp(l / NR), 100 * sqrt(q / NR - (l / NR) ^ 2), a / NR, b / NR
    }'
