#!/usr/bin/env bash
# The switch benchmark, VM-less, on equal core budgets (design brief §9,
# "virtio-user loopback"): core 0 runs one DPDK testpmd with two ports in io
# forwarding (the two "VMs"), core 1 runs the switch under test:
#   valed    valed --threads 1 --cpus 1, two vhost-user ports on vale0
#            (VM side: two virtio-user ports; one copy per frame, by valed);
#   testpmd  testpmd as the switch: two net_vhost ports, io forwarding
#            (VM side: two virtio-user ports; two copies per frame, both by
#            the switch: guest TX -> mbuf -> guest RX);
#   bridge   the Linux bridge br-bench between two TAP devices, in a network
#            namespace this script creates and deletes (VM side: two net_tap
#            ports; testpmd's writev copies each frame into an skb and its
#            readv copies it out, both on core 0; the bridge moves the skb).
#            RPS sends each TAP's receive processing (bridge lookup and
#            forwarding, the enqueue to the other TAP) to core 1;
#   bridge-norps  (optional) the same without RPS: the kernel does all of it
#            on core 0, inside testpmd's writev; core 1 stays idle.
# Every run starts `start tx_first BURSTS` (BURSTS bursts of 32 frames in
# flight per port) 5 s after the VM side came up, warms up 2 s, then counts
# the frames the VM side receives for SECS seconds. Switches are interleaved
# run by run (valed testpmd bridge valed testpmd bridge ...).
#
# Frames are unicast: port 0 has MAC 02:00:00:00:00:10, port 1
# 02:00:00:00:00:11, each sends to the other's (--eth-peer); the bridge has
# static fdb entries for both, valed learns them.
#
# usage: scripts/bench-switch.sh [RUNS] [SECS] [BURSTS]
#   RUNS    runs per switch and size (default 5)
#   SECS    measured seconds per run (default 10)
#   BURSTS  bursts of 32 in flight per port (default 4)
# environment:
#   SIZES     frame sizes without CRC (default "60 508 1514", i.e. 64, 512,
#             1518 B on the wire with the CRC)
#   SWITCHES  default "valed testpmd bridge"; also "bridge-norps"
#   CSV, SVG  outputs (default docs/bench-switch.csv, docs/bench-switch.svg;
#             SVG= skips the plot)
#   VALED     a valed binary to use instead of building target/release/valed
#   VALED_B   a second valed binary, run as switch "valed-b" (add it to
#             SWITCHES): two builds interleaved run by run, for A/B tests
#   GEN_MBUF  the VM side's mbuf size (testpmd --mbuf-size, headroom
#             included; with --enable-scatter): e.g. 512 makes the
#             VM side post RX buffers of 396 B, so a 1514 B frame takes
#             four mergeable buffers and goes out as a four-descriptor
#             chain, the multi-buffer paths of both switches. Default:
#             testpmd's 2176 B, one buffer per frame. The testpmd VM side
#             only (not VMS=virtio); the CSV does not record it
#   KEEP      set: keep the last run's logs (testpmd, switch, bridge state)
#   HUGE      1: the testpmds (the VM side and testpmd as the switch) run
#             on 2 MiB huge pages, as DPDK and QEMU are deployed, instead of
#             --no-huge's 4 KiB pages. The script mounts a hugetlbfs of its
#             own, raises the 2 MiB pool if fewer than 1100 pages are free
#             and unreserved, and puts both back at exit (needs root). Without it a switch that
#             touches more pages per frame pays more TLB misses: testpmd
#             (guest buffer, its own mbuf, guest buffer) more than valed
#             (guest buffer to guest buffer).
#   VMS       the VM side: "testpmd" (default: two virtio-user ports, io
#             forwarding) and/or "virtio": pkt-gen's own virtio driver in
#             guest-driver's `bridge` example (two virtio: ports in one
#             netmap region, forwarding by swapping buffers, the same
#             tx_first bursts); such runs are labelled SWITCH@virtio (not
#             with the Linux bridge, whose ports are TAPs)
# Needs root for the bridge (network namespace, TAP), dpdk-testpmd (Debian
# package dpdk-dev), two cores.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
SECS=${2:-10}
BURSTS=${3:-4}
SIZES=${SIZES:-60 508 1514}
SWITCHES=${SWITCHES:-valed testpmd bridge}
GEN_MBUF=${GEN_MBUF:-}
CSV=${CSV-docs/bench-switch.csv}
SVG=${SVG-docs/bench-switch.svg}
SETTLE=5
WARM=2
# DPDK's memory options for the testpmds (HUGE: see above).
DPDK_MEM=(--no-huge -m 1024)
MAC0=02:00:00:00:00:10
MAC1=02:00:00:00:00:11
NS=vale-bench-$$
PFX=vbs$$ # DPDK file prefixes of this run

command -v dpdk-testpmd >/dev/null || { echo "dpdk-testpmd not found: apt-get install dpdk-dev" >&2; exit 1; }
[ "$(nproc)" -ge 2 ] || { echo "needs 2 cores" >&2; exit 1; }
case " $SWITCHES " in
*" bridge"*)
    [ "$(id -u)" = 0 ] || { echo "the bridge needs root (network namespace, TAP devices)" >&2; exit 1; }
    [ -c /dev/net/tun ] || { echo "the bridge needs /dev/net/tun" >&2; exit 1; }
    if ! command -v ip >/dev/null || ! command -v bridge >/dev/null; then
        echo "the bridge needs iproute2" >&2
        exit 1
    fi
    ;;
esac
for sw in $SWITCHES; do
    case $sw in valed | testpmd | bridge | bridge-norps) ;;
    valed-b) [ -x "${VALED_B:-}" ] || { echo "valed-b needs VALED_B, a valed binary" >&2; exit 1; } ;;
    *) echo "unknown switch $sw" >&2; exit 1 ;;
    esac
done

VALED_FROM="given"
if [ -z "${VALED:-}" ]; then
    VALED=$PWD/target/release/valed
    VALED_FROM="built from tree $(git describe --always --dirty 2>/dev/null || echo '?')"
    case " $SWITCHES " in *" valed "*) cargo build --release -q -p valed ;; esac
fi
cargo build --release -q -p bench-plot
PLOT=$PWD/target/release/bench-plot
# The two cores' distance (a cache line's round trip between them, ns),
# before and after each run: the hypervisor may move the vCPUs between
# cores that share a cache and cores that do not, and the loopback's rate
# follows (bench-plot compares runs of the same placement).
PROBE=$PWD/target/release/core-probe
VMS=${VMS:-testpmd}
# The runs of one round, interleaved: switch@vm for each VM side.
RUNLIST=
for vm in $VMS; do
    case $vm in testpmd | virtio) ;; *) echo "unknown VM side $vm" >&2; exit 1 ;; esac
    for sw in $SWITCHES; do
        case $vm@$sw in virtio@bridge*) continue ;; esac
        RUNLIST="$RUNLIST $sw@$vm"
    done
done
case " $VMS " in *" virtio "*)
    cargo build --release -q -p guest-driver --example bridge
    BRIDGE=$PWD/target/release/examples/bridge
    ;;
esac

W=$(mktemp -d /tmp/bench-switch.XXXXXX)
# PIDs of the processes this script started and has not reaped yet: the
# switch, the VM side's testpmd, the feeder of its commands.
SW='' GEN='' FEED=''
NS_MADE=
HUGE_MNT='' HUGE_WAS=''
cleanup() {
    local p
    for p in $SW $GEN $FEED; do kill "$p" 2>/dev/null || true; done
    for p in $SW $GEN $FEED; do wait "$p" 2>/dev/null || true; done
    if [ -n "$HUGE_MNT" ] && mountpoint -q "$HUGE_MNT"; then
        if ! umount "$HUGE_MNT"; then
            echo "cannot unmount $HUGE_MNT: left in place, with $W" >&2
            KEEP=1
        fi
    fi
    if [ -n "$HUGE_WAS" ]; then echo "$HUGE_WAS" >"$HUGE_POOL/nr_hugepages" || true; fi
    # Deleting the namespace deletes the bridge and any TAP left in it.
    if [ -n "$NS_MADE" ]; then ip netns delete "$NS" 2>/dev/null || true; fi
    rm -rf "/var/run/dpdk/${PFX}sw" "/var/run/dpdk/${PFX}gen"
    if [ -n "${KEEP:-}" ]; then echo "logs of the last run: $W" >&2; else rm -rf "$W"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The 2 MiB pool, whatever the default huge page size.
HUGE_POOL=/sys/kernel/mm/hugepages/hugepages-2048kB
# Pages of the pool free and not reserved by another program.
huge_free() {
    echo $(($(cat "$HUGE_POOL/free_hugepages") - $(cat "$HUGE_POOL/resv_hugepages")))
}
if [ "${HUGE:-0}" != 0 ]; then
    [ "$(id -u)" = 0 ] || { echo "HUGE needs root (hugetlbfs mount, the 2 MiB page pool)" >&2; exit 1; }
    [ -d "$HUGE_POOL" ] || { echo "HUGE: this kernel has no 2 MiB huge pages ($HUGE_POOL)" >&2; exit 1; }
    free=$(huge_free)
    if [ "$free" -lt 1100 ]; then
        HUGE_WAS=$(cat "$HUGE_POOL/nr_hugepages")
        echo $((HUGE_WAS + 1100 - free)) >"$HUGE_POOL/nr_hugepages"
        free=$(huge_free)
        [ "$free" -ge 1100 ] || { echo "HUGE: only $free 2 MiB pages free after raising the pool (not enough memory?)" >&2; exit 1; }
    fi
    mkdir "$W/huge"
    HUGE_MNT=$W/huge
    mount -t hugetlbfs -o pagesize=2M none "$W/huge"
    # One file per memory segment list: few regions for vhost-user to map.
    DPDK_MEM=(--huge-dir "$W/huge" --single-file-segments -m 1024)
fi

# The namespace holding br-bench and (run by run) the TAP devices: nothing
# here touches the host's interfaces. IPv6 is off so that no TAP sends
# router or neighbour solicitations into the loop; bridge netfilter calls
# are off (this kernel has br_netfilter built in, on by default).
make_bridge() {
    ip netns add "$NS"
    NS_MADE=1
    ip netns exec "$NS" sysctl -q -w net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
    if ip netns exec "$NS" test -e /proc/sys/net/bridge/bridge-nf-call-iptables; then
        ip netns exec "$NS" sysctl -q -w net.bridge.bridge-nf-call-iptables=0 \
            net.bridge.bridge-nf-call-ip6tables=0 net.bridge.bridge-nf-call-arptables=0
    fi
    ip -n "$NS" link add br-bench type bridge stp_state 0 forward_delay 0 ageing_time 30000 \
        mcast_snooping 0 nf_call_iptables 0 nf_call_ip6tables 0 nf_call_arptables 0
    ip -n "$NS" link set br-bench up
}

# Puts testpmd's TAP devices on br-bench once its ports are up ($1: bridge
# or bridge-norps). net_tap gives the kernel side of each TAP the DPDK port's
# MAC; the bridge would take frames to that address as its own (deliver them
# locally), so the kernel sides get other addresses. Static fdb entries send
# each port's MAC to its TAP: forwarding is unicast, not flooding.
bridge_ports() {
    local p mac
    for _ in $(seq 100); do
        ip -n "$NS" link show vtap0 2>/dev/null | grep -q 'UP' &&
            ip -n "$NS" link show vtap1 2>/dev/null | grep -q 'UP' && break
        sleep 0.1
    done
    for p in 0 1; do
        mac=$MAC0
        [ "$p" = 1 ] && mac=$MAC1
        ip -n "$NS" link set "vtap$p" address "02:00:00:00:ff:0$p"
        ip -n "$NS" link set "vtap$p" master br-bench
        ip -n "$NS" link set "vtap$p" up
        bridge -n "$NS" fdb replace "$mac" dev "vtap$p" master static
        if [ "$1" = bridge ]; then
            # RPS: the TAP's receive processing (netif_receive_skb: bridge,
            # forwarding, enqueue on the other TAP) runs in core 1's softirq
            # instead of in the sender's writev on core 0.
            ip netns exec "$NS" sh -c "for f in /sys/class/net/vtap$p/queues/rx-*/rps_cpus; do echo 2 >\$f; done"
        fi
    done
    bridge -n "$NS" fdb show br br-bench
    ip -n "$NS" -d link show type bridge_slave
}

# Starts the switch under test ($1) for frames of $2 bytes; sets SW.
start_switch() {
    SW=
    rm -f "$W"/p0.sock "$W"/p1.sock
    case $1 in
    valed | valed-b)
        local bin=$VALED
        [ "$1" = valed-b ] && bin=$VALED_B
        taskset -c 1 "$bin" --socket "$W/ctl.sock" --threads 1 --cpus 1 \
            --vhost-user "p0=$W/p0.sock,attach=vale0" --vhost-user "p1=$W/p1.sock,attach=vale0" \
            --log warn >"$W/switch.log" 2>&1 &
        ;;
    testpmd)
        taskset -c 1 dpdk-testpmd --no-pci "${DPDK_MEM[@]}" --file-prefix "${PFX}sw" --lcores '0@1,1@1' \
            --vdev "net_vhost0,iface=$W/p0.sock,queues=1" --vdev "net_vhost1,iface=$W/p1.sock,queues=1" \
            -- --forward-mode=io --nb-cores=1 --max-pkt-len=1518 -a --stats-period 100 \
            >"$W/switch.log" 2>&1 &
        ;;
    *) return 0 ;; # the bridge is there already; its ports come with the VM side
    esac
    SW=$!
    for _ in $(seq 100); do
        [ -S "$W/p0.sock" ] && [ -S "$W/p1.sock" ] && return 0
        sleep 0.1
    done
    echo "switch $1 did not create its sockets:" >&2
    cat "$W/switch.log" >&2
    return 1
}

stop_switch() {
    [ -n "$SW" ] || return 0
    kill "$SW" 2>/dev/null || true
    wait "$SW" 2>/dev/null || true
    SW=
}

# /proc/stat's lines for the two cores, then one line "own TICKS": the CPU
# time (user + system, all threads) of this run's switch and VM side.
cpu_snapshot() {
    local p own=0 f
    grep -E '^cpu[01] ' /proc/stat
    for p in $SW $(cat "$W/gen.pid" 2>/dev/null); do
        f=$(cat "/proc/$p/stat" 2>/dev/null) || continue
        f=${f##*) } # fields from 3 on; utime and stime are 14 and 15
        read -r -a f <<<"$f"
        own=$((own + f[11] + f[12]))
    done
    echo "own $own"
}

# The commands for the VM side's testpmd ($1: switch), timed.
feeder() {
    sleep "$SETTLE"
    case $1 in bridge*) bridge_ports "$1" >"$W/bridge.log" 2>&1 || true ;; esac
    echo "start tx_first $BURSTS"
    sleep "$WARM"
    echo "clear port stats all"
    cpu_snapshot >"$W/stat0"
    sleep "$SECS"
    echo "show port stats all"
    cpu_snapshot >"$W/stat1"
    case $1 in bridge*) { ip -n "$NS" -s link show; bridge -n "$NS" -s fdb show br br-bench; } >>"$W/bridge.log" 2>&1 || true ;; esac
    sleep 0.5
    echo "stop"
    echo "quit"
}

# Runs the VM side against switch $1 with frames of $2 bytes; sets RES to
# "rx0 rx1 tx0 tx1" (frames per port in SECS seconds) or nothing.
generate() {
    local sw=$1 size=$2 extra=() vdevs=() pre=()
    [ "$size" -gt 1500 ] && extra=(--max-pkt-len=1518)
    [ -n "$GEN_MBUF" ] && extra+=(--mbuf-size="$GEN_MBUF" --enable-scatter)
    case $sw in
    bridge*)
        pre=(ip netns exec "$NS")
        vdevs=(--vdev "net_tap0,iface=vtap0,mac=$MAC0" --vdev "net_tap1,iface=vtap1,mac=$MAC1")
        ;;
    *)
        vdevs=(--vdev "net_virtio_user0,path=$W/p0.sock,mac=$MAC0" --vdev "net_virtio_user1,path=$W/p1.sock,mac=$MAC1")
        ;;
    esac
    rm -f "$W/cmd"
    mkfifo "$W/cmd"
    feeder "$sw" >"$W/cmd" &
    FEED=$!
    "${pre[@]}" taskset -c 0 dpdk-testpmd --no-pci "${DPDK_MEM[@]}" --file-prefix "${PFX}gen" --lcores '0@0,1@0' \
        "${vdevs[@]}" -- -i --forward-mode=io --nb-cores=1 --txpkts="$size" "${extra[@]}" \
        --eth-peer="0,$MAC1" --eth-peer="1,$MAC0" <"$W/cmd" >"$W/gen.log" 2>&1 &
    GEN=$!
    echo "$GEN" >"$W/gen.pid"
    wait "$GEN" || true
    GEN=
    wait "$FEED" || true
    FEED=
    # The first RX-/TX-packets lines after "clear" are the per-port stats.
    RES=$(awk 'BEGIN {n = 0} /NIC statistics for port/ && !/cleared/ {p = 1}
        p && /RX-packets:/ {rx[n] = $2} p && /TX-packets:/ {tx[n] = $2; n++; p = 0}
        END {if (n >= 2) print rx[0], rx[1], tx[0], tx[1]}' "$W/gen.log")
}

# The VM side as pkt-gen's virtio driver (guest-driver's bridge example)
# against switch $1 with frames of $2 bytes; sets RES as generate does.
generate_virtio() {
    local sw=$1 size=$2
    (
        sleep "$WARM"
        cpu_snapshot >"$W/stat0"
        sleep "$SECS"
        cpu_snapshot >"$W/stat1"
    ) &
    FEED=$!
    taskset -c 0 "$BRIDGE" "virtio:$W/p0.sock" "virtio:$W/p1.sock" -f "$BURSTS" -l "$size" \
        -t $((WARM + SECS + 1)) >"$W/gen.log" 2>&1 &
    GEN=$!
    echo "$GEN" >"$W/gen.pid"
    wait "$FEED" || true
    FEED=
    wait "$GEN" || true
    GEN=
    # One line per second: "rx A B Mpps"; the seconds after the warm-up.
    RES=$(awk -v w="$WARM" -v s="$SECS" '/^rx / { n++; if (n > w && n <= w + s) { a += $2; b += $3 } }
        END { if (n >= w + s) printf "%d %d %d %d\n", a * 1e6, b * 1e6, b * 1e6, a * 1e6 }' "$W/gen.log")
}

# Percent of the measured interval per core: "usr sys irq idle steal" for
# core 0, then core 1 (irq = hard irq + softirq; idle includes iowait);
# then "other": the two cores' usr + sys time not spent by this run's
# switch and VM side, in percent of one core (other tenants of the
# machine; kernel work in interrupts is under irq, not here).
cpu_shares() {
    paste -d' ' "$W/stat0" "$W/stat1" | awk '
    $1 == "own" { own = $4 - $2; next }
    {
        t = 0
        for (i = 2; i <= 9; i++) { d[i] = $(i + 11) - $i; t += d[i] }
        if (t == 0) t = 1
        busy += d[2] + d[3] + d[4]; tot += t
        printf "%.1f %.1f %.1f %.1f %.1f ", 100*(d[2]+d[3])/t, 100*d[4]/t, 100*(d[7]+d[8])/t, 100*(d[5]+d[6])/t, 100*d[9]/t
    }
    END { o = busy - own; if (o < 0) o = 0; printf "%.1f", 200 * o / tot }'
}

case " $SWITCHES " in *" bridge"*) make_bridge ;; esac

echo "switch loopback: $RUNS runs x ${SECS}s per switch and size, $BURSTS bursts of 32 in flight per port, $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "core 0: the VM side: testpmd, 2 ports (virtio-user, or net_tap for the bridge), io fwd; or (SWITCH@virtio) guest-driver's bridge over 2 virtio: ports; core 1: the switch under test"
echo "frame sizes: $SIZES bytes as testpmd sends them (--txpkts), without the 4-byte CRC: on the wire with CRC add 4 (60 = 64 B, 1514 = 1518 B)"
[ -n "${VALED_B:-}" ] && echo "valed-b $VALED_B"
echo "testpmd memory: ${DPDK_MEM[*]}"
echo "valed $VALED ($VALED_FROM); DPDK $(dpkg-query -W -f '${Version}' dpdk-dev 2>/dev/null || echo '?'); kernel $(uname -r)"
echo "size,run,switch,secs,bursts,rx0,rx1,tx0,tx1,mpps,cpu0_usr,cpu0_sys,cpu0_irq,cpu0_idle,cpu0_steal,cpu1_usr,cpu1_sys,cpu1_irq,cpu1_idle,cpu1_steal,other,c2c_before,c2c_after" >"$W/runs.csv"
for size in $SIZES; do
    for r in $(seq "$RUNS"); do
        for run in $RUNLIST; do
            sw=${run%@*}
            vm=${run#*@}
            c2c0=$(timeout 10 "$PROBE" 0 1) || c2c0=-
            start_switch "$sw" "$size"
            rm -f "$W/stat0" "$W/stat1"
            if [ "$vm" = virtio ]; then
                generate_virtio "$sw" "$size"
            else
                generate "$sw" "$size"
            fi
            stop_switch
            c2c1=$(timeout 10 "$PROBE" 0 1) || c2c1=-
            label=$sw
            [ "$vm" = virtio ] && label=$run
            rx0='' rx1='' tx0='' tx1=''
            read -r rx0 rx1 tx0 tx1 <<<"$RES" || true
            if [ -z "$rx1" ] || [ ! -s "$W/stat1" ]; then
                echo "size $size run $r $label: no result" >&2
                tail -5 "$W/gen.log" >&2
                continue
            fi
            mpps=$(awk -v a="$rx0" -v b="$rx1" -v s="$SECS" 'BEGIN {printf "%.6f", (a + b) / 2 / s / 1e6}')
            read -r -a cpu <<<"$(cpu_shares)"
            echo "$size,$r,$label,$SECS,$BURSTS,$rx0,$rx1,$tx0,$tx1,$mpps,$(IFS=,; echo "${cpu[*]}"),$c2c0,$c2c1" >>"$W/runs.csv"
            printf 'size %4s run %d %-12s %8.3f Mpps per direction (rx %s / %s)  core0 usr/sys/irq/idle %s/%s/%s/%s%%  core1 %s/%s/%s/%s%%  other %s%%  cores %s/%s ns apart\n' \
                "$size" "$r" "$label" "$mpps" "$rx0" "$rx1" "${cpu[0]}" "${cpu[1]}" "${cpu[2]}" "${cpu[3]}" \
                "${cpu[5]}" "${cpu[6]}" "${cpu[7]}" "${cpu[8]}" "${cpu[10]}" "$c2c0" "$c2c1"
        done
    done
done
echo
if [ -n "$CSV" ]; then
    cp "$W/runs.csv" "$CSV"
    echo "per-run figures: $CSV"
fi
echo
if [ -n "$SVG" ]; then
    "$PLOT" "$W/runs.csv" "$SVG"
    echo
    echo "plot: $SVG"
else
    "$PLOT" "$W/runs.csv"
fi
