#!/usr/bin/env bash
# Installs what the embedded sandbox layer (crates/paddock-embedded) and its
# root-only tests need on a Debian 12 host. Idempotent; safe to run twice.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
# libelf-dev and zlib1g-dev: libcontainer's cgroup v2 device filter (eBPF) builds libbpf.
# e2fsprogs and mount: every sandbox's writable layer is a sparse ext4 image on a loop device (disk.rs).
pkgs=(debootstrap libseccomp-dev libelf-dev zlib1g-dev e2fsprogs mount pkg-config nftables iproute2 tini ca-certificates)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep 'install ok installed' >/dev/null || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The sandboxes' init (tini-static) is bind-mounted into every container.
test -x /usr/bin/tini-static
# Static binaries for inside sandboxes (the runtime, the tests' stand-in) target musl.
if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
  rustup target add x86_64-unknown-linux-musl
fi
