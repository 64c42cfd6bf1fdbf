# benches/targets.sh: sourced by syscalls.sh, packets.sh and profile.sh.
# Starts the two wsbench echo backends on BASE+1 and BASE+2 and one proxy
# under test on 127.0.0.1, and stops everything it started on exit.
# The proxy: `haproxy` (the shared bench/anchors/haproxy.cfg with its ports
# moved, BASE+12), `naive` (the shared bench's naive-proxy, built by
# anchors.sh, BASE+10) or the path of a release gateway binary (BASE+13,
# started as anchors.sh starts it, plus GW_ARGS). BASE=19100 by default,
# away from anchors.sh's 19001-19013.
BASE=${BASE:-19100}
BENCH=${BENCH:-../shared/bench}
WSB=${WSB:-/tmp/wsbench-target/release/wsbench}
NAIVE=${NAIVE:-/tmp/naive-proxy-target/release/naive-proxy}
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

start_backends() {   # start_backends DIR: logs in DIR
    local p
    for p in $B1 $B2; do
        "$WSB" echo-server --listen "127.0.0.1:$p" --threads 1 >"$1/echo-$p.log" 2>&1 &
        PIDS+=($!)
    done
    for p in $B1 $B2; do
        timeout 30 "$WSB" probe --url "ws://127.0.0.1:$p/" --timeout 15 >/dev/null || { echo "backend $p down"; exit 1; }
    done
}

start_proxy() {      # start_proxy TARGET DIR LOG: sets PORT, URL and PID
    case $1 in
        haproxy)
            [[ -f $BENCH/anchors/haproxy.cfg ]] || { echo "no $BENCH/anchors/haproxy.cfg: set BENCH"; exit 1; }
            PORT=$((BASE + 12))
            sed -e "s/19012/$PORT/; s/19001/$B1/; s/19002/$B2/; s#/tmp/wsproxy-anchors/haproxy.pid#$2/haproxy.pid#" \
                "$BENCH/anchors/haproxy.cfg" >"$2/haproxy.cfg"
            haproxy -db -f "$2/haproxy.cfg" >"$3" 2>&1 & ;;
        naive)
            PORT=$((BASE + 10))
            "$NAIVE" --listen "127.0.0.1:$PORT" --upstream "127.0.0.1:$B1" --upstream "127.0.0.1:$B2" >"$3" 2>&1 & ;;
        *)
            PORT=$((BASE + 13))
            "$1" --listen "127.0.0.1:$PORT" --upstream "127.0.0.1:$B1" --upstream "127.0.0.1:$B2" \
                ${GW_ARGS:-} >"$3" 2>&1 & ;;
    esac
    PID=$!
    PIDS+=($PID)
    URL=ws://127.0.0.1:$PORT/
    timeout 30 "$WSB" probe --url "$URL" --timeout 20 >/dev/null || { echo "proxy down"; cat "$3"; exit 1; }
}
