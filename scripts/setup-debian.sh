#!/usr/bin/env bash
# Prepares a fresh Debian 12 machine to build, test and benchmark vale.
# Idempotent; run as root or with sudo available.
set -euo pipefail

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# dpdk-dev: testpmd, the real virtio-net driver (virtio-user) the vhost-user
# tests and benchmarks drive, and the switch we benchmark against.
# qemu-system-x86: the guests of the end-to-end tests and the demo (their
# image is built from Debian packages by images/build.sh: cpio, xz, zstd).
# libvirt-daemon-system: the libvirt end-to-end test runs a domain from our
# XML.
pkgs=(build-essential pkg-config ca-certificates curl git bc groff-base dpdk-dev
      qemu-system-x86 cpio xz-utils zstd libvirt-daemon-system)
missing=()
for p in "${pkgs[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
fi

# Without systemd (containers, CI) nothing started libvirt's daemons.
if ! virsh -c qemu:///system version >/dev/null 2>&1; then
    $SUDO virtlogd -d || true
    $SUDO libvirtd -d || true
    for _ in $(seq 50); do
        virsh -c qemu:///system version >/dev/null 2>&1 && break
        sleep 0.1
    done
fi

if ! command -v cargo >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/cargo" ] || \
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true

# Fuzzing (optional): cargo-fuzz on a nightly toolchain.
if [ "${VALE_FUZZ:-1}" = 1 ] && rustup toolchain list 2>/dev/null | grep -q nightly; then
    command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
fi
echo "vale: build environment ready ($(cargo --version))"
