#!/usr/bin/env bash
# Unpacks QEMU from bookworm-backports beside the system's QEMU, without
# installing it, and prints the path of a qemu-system-x86_64 that runs it.
#
# Why: QEMU 7.2 (Debian 12's) loses guest-CPU writes in a live migration
# under TCG, with or without vale (valed/tests/qemu.rs
# qemu_tcg_migration_of_a_busy_guest_without_nics fails in most runs; with
# QEMU 10.0 it passes every run). Where KVM cannot run a guest, the live
# migration test runs its two migrating QEMUs with this one
# (VALE_MIGRATION_QEMU); every other guest keeps the system's QEMU.
#
# Usage: scripts/fetch-qemu-backports.sh [DIR]   (default target/qemu-backports)
# Idempotent: a second run reuses DIR. Needs root for missing libraries only.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$(realpath -m "${1:-target/qemu-backports}")
wrapper="$dir/bin/qemu-system-x86_64"
if [ -x "$wrapper" ] && "$wrapper" --version >/dev/null 2>&1; then
    echo "$wrapper"
    exit 0
fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

apt_dir="$dir/apt"
mkdir -p "$apt_dir/sources" "$apt_dir/state/lists/partial" \
    "$apt_dir/cache/archives/partial" "$dir/debs"
cat > "$apt_dir/sources/debian.sources" <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
apt_opts=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$apt_dir/sources"
          -o "Dir::State=$apt_dir/state" -o "Dir::Cache=$apt_dir/cache"
          -o APT::Sandbox::User=root)
apt-get "${apt_opts[@]}" update -q >&2

# The backport's libraries come from bookworm itself: install the missing
# ones system-wide (they replace nothing); QEMU itself only goes to $dir.
mapfile -t libs < <(apt-cache "${apt_opts[@]}" depends qemu-system-x86/bookworm-backports \
    | awk '$1 == "Depends:" && $2 ~ /^(lib|zlib)/ { print $2 }' | sort -u)
missing=()
for p in "${libs[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "fetch-qemu-backports: installing libraries ${missing[*]}" >&2
    $SUDO apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}" >&2
fi

(cd "$dir/debs" && rm -f ./*.deb && apt-get "${apt_opts[@]}" download \
    qemu-system-x86/bookworm-backports qemu-system-common/bookworm-backports \
    qemu-system-data/bookworm-backports seabios/bookworm-backports ipxe-qemu >&2)
rm -rf "$dir/root"
for deb in "$dir"/debs/*.deb; do
    dpkg-deb -x "$deb" "$dir/root"
done
if ldd "$dir/root/usr/bin/qemu-system-x86_64" | grep "not found" >&2; then
    echo "fetch-qemu-backports: the unpacked QEMU misses the libraries above" >&2
    exit 1
fi

mkdir -p "$dir/bin"
cat > "$wrapper" <<EOF
#!/bin/sh
# QEMU from bookworm-backports, unpacked by scripts/fetch-qemu-backports.sh.
export QEMU_MODULE_DIR="$dir/root/usr/lib/x86_64-linux-gnu/qemu"
exec "$dir/root/usr/bin/qemu-system-x86_64" -L "$dir/root/usr/share/qemu" \\
    -L "$dir/root/usr/share/seabios" "\$@"
EOF
chmod 755 "$wrapper"
"$wrapper" --version | head -1 >&2
echo "$wrapper"
