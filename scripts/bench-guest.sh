#!/usr/bin/env bash
# pkt-gen inside guests: the virtio-net function driven by pkt-gen's own
# driver (virtio:PCI, guest-driver's PCI transport) against the guest
# kernel's path (netmap:eth0, pkt-gen's generic adapter on AF_PACKET over
# virtio_net). Two guests from images/ on two valed VM ports; the sender
# in guest A, the receiver in guest B, each run for SECS seconds, the two
# paths interleaved RUNS times. Under TCG (this machine) the figures are
# relative, a function check more than a speed; with KVM they are real.
#
#   scripts/bench-guest.sh [RUNS [SECS]]     (default 3 runs of 5 s, 60 B)
#   SIZE=1514 scripts/bench-guest.sh
#
# Needs root, qemu-system-x86, images/out built with VALE_PKTGEN (as
# scripts/test.sh does).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
SECS=${2:-5}
SIZE=${SIZE:-60}
cargo build --release -q -p valed -p vmm-integration
VALED=$PWD/target/release/valed
VM=$PWD/target/release/vale-vm
W=$(mktemp -d /tmp/bench-guest.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT

"$VALED" --socket "$W/ctl.sock" --threads 1 --log warn \
    --vhost-user "a=$W/a.sock,attach=vale0" --vhost-user "b=$W/b.sock,attach=vale0" >"$W/valed.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do [ -S "$W/b.sock" ] && break; sleep 0.1; done
for g in a b; do
    "$VM" run --kernel images/out/vmlinuz --initrd images/out/initramfs.cpio.gz --name "g$g" \
        --memory 512 --socket "$W/$g.sock" --dir "$W/vm-$g" --append quiet >"$W/vm-$g.log" 2>&1 &
    PIDS+=($!)
done
agent() { echo "$W/vm-$1/agent.sock"; }
# exec joins its arguments into one shell line for the guest.
run() { "$VM" exec --agent "$(agent "$1")" --timeout "${3:-60}" -- "$2"; }
for g in a b; do
    for _ in $(seq 300); do
        [ -S "$(agent $g)" ] && run "$g" true >/dev/null 2>&1 && break
        sleep 1
    done
    run "$g" "echo 16 > /proc/sys/vm/nr_hugepages" >/dev/null
done
pci() { run "$1" 'basename $(readlink -f /sys/class/net/eth0/device/..)' | tr -d '\r\n'; }
PA=$(pci a)
PB=$(pci b)

# The receiver's rate lines in B, median of the whole seconds, in Kpps.
median_kpps() {
    awk '/main_thread/ && /pps/ { for (i = 1; i <= NF; i++) if ($i ~ /^[KM]?pps$/) {
            v = $(i - 1); r[n++] = ($i == "Mpps") ? v * 1000 : ($i == "Kpps") ? v : v / 1000 } }
        END { m = 0; for (i = 1; i < n - 1; i++) b[m++] = r[i]
            for (i = 0; i < m; i++) for (j = i + 1; j < m; j++) if (b[j] < b[i]) { t = b[i]; b[i] = b[j]; b[j] = t }
            if (m == 0) print "nan"; else printf "%.1f\n", b[int(m / 2)] }'
}

echo "pkt-gen in two guests ($("$VM" probe 2>/dev/null | head -1)), $SIZE B frames, A -> valed -> B, $RUNS runs x ${SECS}s, $(date -u '+%Y-%m-%d %H:%M UTC')"
printf '%-4s %-22s %12s\n' run path "rx Kpps"
for r in $(seq "$RUNS"); do
    for path in virtio af_packet; do
        case $path in
        virtio) ia="virtio:$PA,slots=256" ib="virtio:$PB,slots=256" env= ;;
        af_packet) ia="netmap:eth0" ib="netmap:eth0" env="VALE_ADMODE=generic" ;;
        esac
        if [ "$path" = af_packet ]; then
            # eth0 is back on virtio_net after a virtio run, but down.
            for g in a b; do
                run "$g" 'for i in $(seq 50); do [ -e /sys/class/net/eth0 ] && break; sleep 0.2; done; ip link set eth0 up' >/dev/null
            done
        fi
        # The sender first: the receiver counts from its first frame.
        run a "$env timeout -s INT $((SECS + 4)) pkt-gen -i $ia -f tx -l $SIZE >/tmp/tx.log 2>&1 &" >/dev/null
        sleep 1
        run b "$env timeout -s INT $((SECS + 2)) pkt-gen -i $ib -f rx >/tmp/rx.log 2>&1; true" $((SECS + 30)) >/dev/null
        kpps=$(run b "cat /tmp/rx.log" | median_kpps)
        printf '%-4s %-22s %12s\n' "$r" "$path" "$kpps"
        sleep 4
    done
done
