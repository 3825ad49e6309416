#!/usr/bin/env bash
# Renders the man pages to plain text under docs/, as `man -l` shows them
# (80 columns, no bold or underline). Needs groff (Debian: groff-base).
set -euo pipefail
cd "$(dirname "$0")/.."

render() {
    local src=$1 out=$2
    # -mandoc reads both mdoc and man pages; -P-c and col -bx strip the
    # terminal's bold/underline so the text diffs cleanly.
    GROFF_NO_SGR=1 groff -mandoc -Tutf8 -rLL=78n -P-c "$src" | col -bx >"$out"
    echo "$src -> $out"
}

mkdir -p docs
render vale-ctl/vale-ctl.8 docs/vale-ctl.8.txt
render valed/valed.8 docs/valed.8.txt
render pkt-gen/pkt-gen.8 docs/pkt-gen.8.txt
render compat/libvale_netmap.7 docs/libvale_netmap.7.txt
