#!/usr/bin/env bash
# The "virtio-user loopback" benchmark (design brief §9) with the two
# vhost-user switches only: valed and testpmd as the switch, 60 and 1514 B
# by default. A thin wrapper over scripts/bench-switch.sh (which also runs
# the Linux bridge, at 60, 508 and 1514 B); see there for the setup.
#
# usage: scripts/bench-vhost.sh [RUNS] [SECS] [BURSTS] [SIZES]
#   RUNS    runs of each switch per size (default 5)
#   SECS    measured seconds per run (default 10)
#   BURSTS  bursts of 32 put in flight per port with `start tx_first N` (default 4)
#   SIZES   frame sizes without CRC (default "60 1514")
# The per-run CSV and the plot go to target/bench-vhost/.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p target/bench-vhost
SWITCHES="valed testpmd" SIZES="${4:-60 1514}" \
    CSV=target/bench-vhost/bench-vhost.csv SVG=target/bench-vhost/bench-vhost.svg \
    exec scripts/bench-switch.sh "${1:-5}" "${2:-10}" "${3:-4}"
