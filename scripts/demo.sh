#!/usr/bin/env bash
# The demo: two QEMU guests on one VALE switch, as a VM operator would run
# them. On a fresh Debian 12 machine, as root:
#
#     ./scripts/demo.sh
#
# installs what is missing (scripts/setup-debian.sh), builds vale, builds the
# guest image from Debian packages (images/build.sh, cached: a second run
# reuses it), starts valed with two vhost-user ports on vale0, boots two
# guests on them (KVM where it can run a guest, TCG otherwise), shows them
# pinging each other, runs a guest-to-guest burst with the kernel's pktgen
# and an iperf3 TCP stream, prints the figures and valed's port counters,
# and cleans up. Under TCG the figures are marked "function, not speed".
#
# Environment: VALE_DEMO_DIR (runtime directory, default a fresh one under
# /tmp), VALE_ACCEL=kvm|tcg (skip the probe), DEMO_SETUP=0 (skip setup).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

if [ "${DEMO_SETUP:-1}" = 1 ]; then
    ./scripts/setup-debian.sh
fi
export PATH="$HOME/.cargo/bin:$PATH"

echo "== build (release)"
cargo build --release -q -p valed -p vale-ctl -p vmm-integration
# Our pkt-gen, statically linked, goes into the image.
RUSTFLAGS='-C target-feature=+crt-static' cargo build --release -q -p pkt-gen \
    --target x86_64-unknown-linux-gnu --target-dir target/static
BIN=$ROOT/target/release
echo "== guest image"
VALE_PKTGEN=$ROOT/target/static/x86_64-unknown-linux-gnu/release/pkt-gen ./images/build.sh

DIR=${VALE_DEMO_DIR:-$(mktemp -d /tmp/vale-demo.XXXXXX)}
mkdir -p "$DIR"
PIDS=()
cleanup() {
    trap - EXIT INT TERM
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    echo "== cleaned up (logs in $DIR)"
}
trap cleanup EXIT INT TERM

ACCEL=$("$BIN/vale-vm" probe)
echo "== accelerator: $ACCEL"
NOTE=""
case $ACCEL in TCG*) NOTE=" (TCG: function, not speed)" ;; esac

echo "== valed: ports ga and gb on vale0"
export VALE_SOCKET=$DIR/valed.sock
"$BIN/valed" --socket "$VALE_SOCKET" --log info \
    --vhost-user "ga=$DIR/ga.sock,attach=vale0" \
    --vhost-user "gb=$DIR/gb.sock,attach=vale0" 2>"$DIR/valed.log" &
PIDS+=($!)
for _ in $(seq 100); do [ -S "$VALE_SOCKET" ] && break; sleep 0.1; done
"$BIN/vale-ctl"

MAC_A=52:54:00:00:00:0a
MAC_B=52:54:00:00:00:0b
boot() { # name ip mac
    "$BIN/vale-vm" run --name "$1" --ip "$2/24" --socket "$DIR/$1.sock" --mac "$3" \
        --kernel images/out/vmlinuz --initrd images/out/initramfs.cpio.gz \
        --memory 512 --dir "$DIR/vm-$1" >"$DIR/vm-$1.log" 2>&1 &
    PIDS+=($!)
    VM_PID[$1]=$!
}
declare -A VM_PID
echo "== booting two guests"
t0=$SECONDS
boot ga 10.0.0.1 $MAC_A
boot gb 10.0.0.2 $MAC_B
run_in() { # guest command...
    local g=$1
    shift
    "$BIN/vale-vm" exec --agent "$DIR/vm-$g/agent.sock" --timeout 120 -- "$@"
}
for g in ga gb; do
    for _ in $(seq 300); do
        run_in "$g" true >/dev/null 2>&1 && break
        kill -0 "${VM_PID[$g]}" 2>/dev/null || break
        sleep 1
    done
    run_in "$g" true >/dev/null || { cat "$DIR/vm-$g.log"; exit 1; }
done
echo "   both up in $((SECONDS - t0)) s"

echo "== ga pings gb"
run_in ga ping -c 5 -W 2 10.0.0.2

echo "== pktgen burst, ga -> gb, 60-byte frames$NOTE"
rx0=$(run_in gb cat /sys/class/net/eth0/statistics/rx_packets)
# The agent takes one command line (no newlines), as ssh does.
PG=/proc/net/pktgen
run_in ga "echo rem_device_all > $PG/kpktgend_0; echo add_device eth0 > $PG/kpktgend_0;" \
    "for c in 'count 200000' 'pkt_size 64' 'delay 0' 'dst 10.0.0.2' 'dst_mac $MAC_B';" \
    "do echo \"\$c\" > $PG/eth0; done; echo start > $PG/pgctrl; grep -A2 Result: $PG/eth0"
rx1=$(run_in gb cat /sys/class/net/eth0/statistics/rx_packets)
echo "   gb received $((rx1 - rx0)) of 200000$NOTE"

echo "== iperf3 TCP, ga -> gb$NOTE"
run_in gb iperf3 -s -1 -D
sleep 1
run_in ga 'iperf3 -c 10.0.0.2 -t 5 | tail -4'

echo "== valed's counters"
"$BIN/vale-ctl" --stats
