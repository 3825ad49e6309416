#!/usr/bin/env bash
# NIC port benchmark on a veth pair (issue "NIC ports"): 60 B frames.
# Transmit, counted by the far end's receive counter in a network
# namespace this script creates and deletes:
#   valed    pkt-gen tx on client port vale0:a (core 0) -> valed, one
#            forwarding thread (core 1) -> NIC port vale0:IF, generic
#            adapter (one sendmmsg per batch, PACKET_QDISC_BYPASS) -> veth
#   generic  pkt-gen -i netmap:IF in its own process (core 0), no valed:
#            in-process rings -> the generic adapter
#   native   the same with VALE_ADMODE=native: AF_XDP, copy mode (veth
#            has XDP in driver mode, no zero-copy)
#   sendto   a plain AF_PACKET socket, one send() per frame (core 0)
#            (nic/examples/sendto.rs): the program that does not use netmap
#   sendmmsg the same program with the generic adapter's socket setup
#            (virtio-net header, PACKET_QDISC_BYPASS) and its sendmmsg of
#            64 frames, nothing else (sendto --as-generic): the kernel's
#            share of the generic adapter's cost
# Runs are interleaved (valed generic native sendto valed ...). veth hands
# each frame to the namespace's stack on the sending CPU, so all pay that.
# Receive: the plain sender inside the namespace (core 0) offers frames;
# valed's NIC port (core 1, its in_packets), or pkt-gen -f rx on
# netmap:IF generic or native (core 1) takes them.
#
# usage: scripts/bench-nic.sh [RUNS] [SECS]   (default 5 runs of 5 s)
# Needs root, iproute2, two cores. Prints one line per run and the medians.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
secs=${2:-5}
ns=vale-bench-nic-$$
here=vbn$$
there=wbn$$
work=$(mktemp -d)
valed_pid=

cleanup() {
    if [ -n "$valed_pid" ]; then kill "$valed_pid" 2>/dev/null || true; wait "$valed_pid" 2>/dev/null || true; fi
    ip netns del "$ns" 2>/dev/null || true
    ip link del "$here" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

cargo build -q --release -p valed -p vale-ctl -p pkt-gen
cargo build -q --release -p nic --examples

ip netns add "$ns"
ip link add "$here" type veth peer name "$there" netns "$ns"
ip link set "$here" up
ip -n "$ns" link set "$there" up
mac=$(ip -n "$ns" -br link show "$there" | awk '{print $3}')

rx_count() {
    ip -n "$ns" -s link show "$there" | awk '/RX:/ {getline; print $2; exit}'
}

tx_count() {
    ip -n "$ns" -s link show "$there" | awk '/TX:/ {getline; print $2; exit}'
}

nic_in() {
    target/release/vale-ctl --stats "vale0:$here" | tr ' ' '\n' | awk -F= '$1 == "in_packets" {print $2}'
}

export VALE_SOCKET=$work/valed.sock
taskset -c 1 target/release/valed --socket "$VALE_SOCKET" --threads 1 --cpus 1 --log warn &
valed_pid=$!
for _ in $(seq 50); do [ -S "$VALE_SOCKET" ] && break; sleep 0.1; done

modes="valed generic native sendto sendmmsg"
# Each transmit run twice over: the far end's stack receives (as a host
# would), then an XDP_DROP program on the far end (nic/examples/xdp_drop.rs)
# drops in XDP, so the sender's rate shows less of the far stack's cost.
results=()
for run in $(seq "$runs"); do
    for far in stack xdp; do
    if [ "$far" = xdp ]; then
        ip netns exec "$ns" target/release/examples/xdp_drop "$there" $((4 * (secs + 2))) &
        drop_pid=$!
        sleep 0.5
    fi
    for sw in $modes; do
        before=$(rx_count)
        case $sw in
        valed)
            target/release/vale-ctl -a "vale0:$here"
            timeout --signal=INT "$((secs + 1))" taskset -c 0 \
                target/release/pkt-gen -i vale0:a -f tx -l 60 -D "$mac" -w 0 -T 100000 \
                >"$work/pktgen.log" 2>&1 || true
            target/release/vale-ctl -d "vale0:$here"
            took=$((secs + 1))
            ;;
        generic | native)
            VALE_ADMODE=$sw timeout --signal=INT "$((secs + 1))" taskset -c 0 \
                target/release/pkt-gen -i "netmap:$here" -f tx -l 60 -D "$mac" -w 0 -T 100000 \
                >"$work/pktgen.log" 2>&1 || true
            took=$((secs + 1))
            ;;
        sendto)
            taskset -c 0 target/release/examples/sendto "$here" "$secs" "$mac" >/dev/null
            took=$secs
            ;;
        sendmmsg)
            taskset -c 0 target/release/examples/sendto "$here" "$secs" "$mac" --as-generic >/dev/null
            took=$secs
            ;;
        esac
        after=$(rx_count)
        mpps=$(awk -v a="$before" -v b="$after" -v s="$took" 'BEGIN {printf "%.3f", (b - a) / s / 1e6}')
        echo "run $run far end $far: $sw $mpps Mpps (60 B, received by the far end)"
        results+=("$far-$sw $mpps")
    done
    if [ "$far" = xdp ]; then
        kill "$drop_pid" 2>/dev/null || true
        wait "$drop_pid" 2>/dev/null || true
    fi
    done
done

for far in stack xdp; do
    for sw in $modes; do
        printf '%s\n' "${results[@]}" | awk -v s="$far-$sw" '$1 == s {print $2}' | sort -n |
            awk -v s="$sw" -v f="$far" '{v[NR] = $1} END {printf "transmit, far end %-5s %-7s median %.3f Mpps (min %.3f, max %.3f, %d runs)\n", f, s, v[int((NR + 1) / 2)], v[1], v[NR], NR}'
    done
done

here_mac=$(ip -br link show "$here" | awk '{print $3}')
rx_results=()
for run in $(seq "$runs"); do
    for sw in valed generic native; do
        sent0=$(tx_count)
        case $sw in
        valed)
            target/release/vale-ctl -a "vale0:$here"
            in0=$(nic_in)
            ip netns exec "$ns" taskset -c 0 target/release/examples/sendto "$there" "$secs" "$here_mac" >/dev/null
            took=$(($(nic_in) - in0))
            target/release/vale-ctl -d "vale0:$here"
            ;;
        *)
            VALE_ADMODE=$sw timeout --signal=INT "$((secs + 3))" taskset -c 1 \
                target/release/pkt-gen -i "netmap:$here" -f rx -w 0 >"$work/rx.log" 2>&1 &
            rx_pid=$!
            sleep 1
            ip netns exec "$ns" taskset -c 0 target/release/examples/sendto "$there" "$secs" "$here_mac" >/dev/null
            sleep 0.5
            kill -INT "$rx_pid" 2>/dev/null || true
            wait "$rx_pid" 2>/dev/null || true
            took=$(awk '/^Received/ {print $2}' "$work/rx.log")
            took=${took:-0}
            ;;
        esac
        sent=$(($(tx_count) - sent0))
        line=$(awk -v s="$sent" -v t="$took" -v d="$secs" 'BEGIN {printf "%.3f %.3f", s / d / 1e6, t / d / 1e6}')
        echo "run $run receive $sw: offered/taken $line Mpps (60 B)"
        rx_results+=("$sw $line")
    done
done
for sw in valed generic native; do
    printf '%s\n' "${rx_results[@]}" | awk -v s="$sw" '$1 == s {print $2, $3}' | sort -n -k2 |
        awk -v s="$sw" '{o[NR] = $1; t[NR] = $2} END {m = int((NR + 1) / 2); printf "receive %-7s median took %.3f Mpps of %.3f offered (%d runs)\n", s, t[m], o[m], NR}'
done
