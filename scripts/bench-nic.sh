#!/usr/bin/env bash
# NIC port transmit benchmark on a veth pair (issue "NIC ports"): frames of
# 60 B go out of the near end, and the far end's receive counter, in a
# network namespace this script creates and deletes, says how many arrived.
#   valed    pkt-gen tx on client port vale0:a (core 0) -> valed, one
#            forwarding thread (core 1) -> NIC port vale0:IF, the generic
#            adapter (TPACKET_V2 ring, PACKET_QDISC_BYPASS) -> veth
#   sendto   a plain AF_PACKET socket, one send() per frame (core 0)
#            (nic/examples/sendto.rs): the program that does not use netmap
# Runs are interleaved (valed sendto valed sendto ...). veth delivers each
# frame to the namespace's stack on the sending CPU, so both pay that.
# Then the receive side: the same plain sender, inside the namespace
# (core 0), sends to the near end; valed (core 1) takes the frames off the
# generic adapter's TPACKET_V3 ring (its NIC port's in_packets), against
# what the namespace sent (its tx counter).
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
target/release/vale-ctl -a "vale0:$here"

results=()
for run in $(seq "$runs"); do
    for sw in valed sendto; do
        before=$(rx_count)
        if [ "$sw" = valed ]; then
            timeout --signal=INT "$((secs + 1))" taskset -c 0 \
                target/release/pkt-gen -i vale0:a -f tx -l 60 -D "$mac" -w 0 -T 100000 \
                >"$work/pktgen.log" 2>&1 || true
            took=$((secs + 1))
        else
            taskset -c 0 target/release/examples/sendto "$here" "$secs" "$mac" >/dev/null
            took=$secs
        fi
        after=$(rx_count)
        mpps=$(awk -v a="$before" -v b="$after" -v s="$took" 'BEGIN {printf "%.3f", (b - a) / s / 1e6}')
        echo "run $run $sw $mpps Mpps (60 B, received by the far end)"
        results+=("$sw $mpps")
    done
done

for sw in valed sendto; do
    printf '%s\n' "${results[@]}" | awk -v s="$sw" '$1 == s {print $2}' | sort -n |
        awk -v s="$sw" '{v[NR] = $1} END {printf "%-7s median %.3f Mpps (min %.3f, max %.3f, %d runs)\n", s, v[int((NR + 1) / 2)], v[1], v[NR], NR}'
done

here_mac=$(ip -br link show "$here" | awk '{print $3}')
rx_results=()
for run in $(seq "$runs"); do
    sent0=$(tx_count)
    in0=$(nic_in)
    ip netns exec "$ns" taskset -c 0 target/release/examples/sendto "$there" "$secs" "$here_mac" >/dev/null
    sent=$(($(tx_count) - sent0))
    took=$(($(nic_in) - in0))
    line=$(awk -v s="$sent" -v t="$took" -v d="$secs" 'BEGIN {printf "%.3f %.3f", s / d / 1e6, t / d / 1e6}')
    echo "run $run receive: offered/taken $line Mpps (60 B)"
    rx_results+=("$line")
done
printf '%s\n' "${rx_results[@]}" | sort -n -k2 |
    awk '{o[NR] = $1; t[NR] = $2} END {m = int((NR + 1) / 2); printf "receive median: valed took %.3f Mpps of %.3f offered (%d runs)\n", t[m], o[m], NR}'
