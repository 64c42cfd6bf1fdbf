#!/usr/bin/env bash
# benches/packets.sh TARGET LABEL: TCP segments per proxied handshake, by
# who sends them (client, proxy toward the client, proxy toward the
# upstream, upstream), pure ACKs apart, from a tcpdump of loopback during a
# short wsbench handshake load. On loopback the sender's kernel also does
# the receiver's TCP work, so every segment the proxy sends is proxy CPU.
#
# TARGET and ports as in syscalls.sh (`haproxy` or a release gateway
# binary; echo backends on BASE+1 and BASE+2, the proxy on BASE+12 or
# BASE+13). Needs tcpdump (apt-get install tcpdump) and root for capture.
#
#   BENCH=/path/to/shared/bench benches/packets.sh haproxy haproxy
#   benches/packets.sh target/release/examples/gateway gateway
set -uo pipefail
T=$1; LABEL=$2
OUT=${OUT:-/tmp/wsproxy-packets}
DUR=${DUR:-0.3}
CONC=${CONC:-50}
D=$OUT/$LABEL; mkdir -p "$D"
. "$(dirname "${BASH_SOURCE[0]}")/targets.sh"
start_backends "$D"
start_proxy "$T" "$D" "$D/proxy.log"
# Headers only, a large buffer: a capture that drops segments would
# undercount (tcpdump reports drops in $D/tcpdump.log).
tcpdump -i lo -nn -s 96 -B 262144 -w "$D/load.pcap" \
    "tcp port $PORT or tcp port $B1 or tcp port $B2" >"$D/tcpdump.log" 2>&1 &
CAP=$!
sleep 1
"$WSB" handshakes --concurrency "$CONC" --duration "$DUR" --url "$URL" >"$D/load.json" 2>"$D/load.log"
sleep 1
kill -INT $CAP; wait $CAP
tcpdump -nn -r "$D/load.pcap" 2>/dev/null | awk -v P="$PORT" -v B1="$B1" -v B2="$B2" -v L="$LABEL" '
    {
        split($3, s, "."); split($5, d, "."); sp = s[5]; dp = d[5]; sub(":", "", dp)
        if (sp == P) k = "proxy to client"
        else if (dp == P) k = "client to proxy"
        else if (dp == B1 || dp == B2) k = "proxy to upstream"
        else k = "upstream to proxy"
        all[k]++
        if (index($0, "Flags [.],") && index($0, "length 0")) acks[k]++
        # Connections: SYNs toward the proxy.
        if (dp == P && $7 == "[S],") n++
    }
    END {
        printf "%s: %d connections; segments per connection (of which pure ACKs)\n", L, n
        split("client to proxy,proxy to client,proxy to upstream,upstream to proxy", ks, ",")
        for (i = 1; i <= 4; i++) printf "  %-18s %5.2f (%4.2f)\n", ks[i], all[ks[i]] / n, acks[ks[i]] / n
        printf "  %-18s %5.2f\n", "sent by the proxy", (all["proxy to client"] + all["proxy to upstream"]) / n
    }' | tee "$D/packets.txt"
grep -h "dropped by kernel" "$D/tcpdump.log"
