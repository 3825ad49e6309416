#!/usr/bin/env bash
# Ping-pong latency between two VM ports, valed against testpmd as the
# switch, interleaved run by run. Two fake guests (vhost-user frontends in
# one process, core 0: backend/examples/pingpong.rs) bounce one 60 B frame
# through the switch (core 1); each waits for its frame on its call
# eventfd, as an interrupt-driven guest driver does.
#
# Switches: valed (busy-poll 50 us, its default), valed with --busy-poll 0
# (the forwarding thread sleeps as soon as it is idle), testpmd as the
# switch (two net_vhost ports, io forwarding: it always polls). SWITCHES
# picks among them; "valed-b" runs a second valed build, $VALED_B, as
# valed is run, and "valed-b-nobusy" as valed-nobusy (for A/B runs of a
# change, interleaved run by run).
#
# usage: scripts/bench-latency.sh [RUNS] [ROUNDS] [GAPS]
#   RUNS    runs of each switch per gap (default 3)
#   ROUNDS  round trips per run, after 1000 warm-up (default 10000)
#   GAPS    pauses between round trips, in us (default "0 200": back to
#           back, and long enough for an idle switch to go to sleep)
# Needs dpdk-testpmd (Debian package dpdk-dev) and two cores.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
ROUNDS=${2:-10000}
GAPS=${3:-0 200}
SWITCHES=${SWITCHES:-valed valed-nobusy testpmd}
case " $SWITCHES " in
*" valed-b "* | *" valed-b-nobusy "*) [ -x "${VALED_B:-}" ] || { echo "valed-b needs VALED_B, a valed binary" >&2; exit 1; } ;;
esac
command -v dpdk-testpmd >/dev/null || { echo "dpdk-testpmd not found: apt-get install dpdk-dev" >&2; exit 1; }
[ "$(nproc)" -ge 2 ] || { echo "needs 2 cores" >&2; exit 1; }
# Two builds: with a target filter (--example) cargo builds only that
# target of every package named, so valed's binary would be left as it was.
cargo build --release -q -p valed
cargo build --release -q -p vale-backend --example pingpong
VALED=$PWD/target/release/valed
PINGPONG=$PWD/target/release/examples/pingpong
W=$(mktemp -d /tmp/bench-latency.XXXXXX)
SW=''
cleanup() {
    [ -n "$SW" ] && kill "$SW" 2>/dev/null && wait "$SW" 2>/dev/null
    rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start_switch() {
    rm -f "$W"/a.sock "$W"/b.sock
    case $1 in
    valed | valed-nobusy | valed-b | valed-b-nobusy)
        local busy=() bin=$VALED
        case $1 in *-nobusy) busy=(--busy-poll 0) ;; esac
        case $1 in valed-b*) bin=$VALED_B ;; esac
        taskset -c 1 "$bin" --socket "$W/ctl.sock" --threads 1 --cpus 1 "${busy[@]}" \
            --vhost-user "a=$W/a.sock,attach=vale0" --vhost-user "b=$W/b.sock,attach=vale0" \
            --log warn >"$W/switch.log" 2>&1 &
        ;;
    testpmd)
        taskset -c 1 dpdk-testpmd --no-pci --no-huge -m 1024 --file-prefix "lat$$" --lcores '0@1,1@1' \
            --vdev "net_vhost0,iface=$W/a.sock,queues=1" --vdev "net_vhost1,iface=$W/b.sock,queues=1" \
            -- --forward-mode=io --nb-cores=1 -a --stats-period 100 >"$W/switch.log" 2>&1 &
        ;;
    esac
    SW=$!
    for _ in $(seq 100); do
        [ -S "$W/a.sock" ] && [ -S "$W/b.sock" ] && return 0
        sleep 0.1
    done
    echo "switch $1 did not create its sockets:" >&2
    tail -5 "$W/switch.log" >&2
    exit 1
}

stop_switch() {
    kill "$SW" 2>/dev/null || true
    wait "$SW" 2>/dev/null || true
    SW=
}

echo "ping-pong latency: $RUNS runs x $ROUNDS round trips per switch and gap, 60 B, $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "core 0: two fake guests (interrupt-driven); core 1: the switch; valed $(git describe --always --dirty 2>/dev/null || echo '?'), DPDK $(dpkg-query -W -f '${Version}' dpdk-dev 2>/dev/null || echo '?')"
printf '%s\n' "gap,run,switch,p50,p90,p99,max" >"$W/runs.csv"
for gap in $GAPS; do
    for r in $(seq "$RUNS"); do
        for sw in $SWITCHES; do
            start_switch "$sw"
            sleep 1
            out=$(taskset -c 0 "$PINGPONG" "$W/a.sock" "$W/b.sock" "$ROUNDS" "$gap" 2>&1 | tail -1) || true
            stop_switch
            # "rounds N gap G us: rtt p50 X us p90 Y us p99 Z us max M us"
            read -r p50 p90 p99 max < <(awk '{for (i = 1; i <= NF; i++) {
                if ($i == "p50") a = $(i + 1); if ($i == "p90") b = $(i + 1);
                if ($i == "p99") c = $(i + 1); if ($i == "max") d = $(i + 1) }
                print a, b, c, d}' <<<"$out")
            if [ -z "$p50" ]; then
                echo "gap $gap run $r $sw: no result: $out" >&2
                continue
            fi
            printf 'gap %4s us run %d %-13s p50 %7s us  p90 %7s us  p99 %7s us  max %7s us\n' \
                "$gap" "$r" "$sw" "$p50" "$p90" "$p99" "$max"
            echo "$gap,$r,$sw,$p50,$p90,$p99,$max" >>"$W/runs.csv"
        done
    done
done
echo
echo "| gap between round trips | switch | p50 (median of runs) | p99 (median of runs) |"
echo "|---|---|---|---|"
for gap in $GAPS; do
    for sw in $SWITCHES; do
        awk -F, -v g="$gap" -v s="$sw" 'BEGIN { n = 0 } $1 == g && $3 == s { p50[n] = $4; p99[n] = $6; n++ }
            function med(a, n,   i, j, t) {
                for (i = 0; i < n; i++) for (j = i + 1; j < n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
                return a[int((n - 1) / 2)] }
            END { if (n) printf "| %s us | %s | %.1f us | %.1f us |\n", g, s, med(p50, n), med(p99, n) }' "$W/runs.csv"
    done
done
