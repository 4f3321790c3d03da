#!/usr/bin/env bash
# Installs what the embedded sandbox layer (crates/paddock-embedded) and its
# root-only tests need on a Debian 12 host. Idempotent; safe to run twice.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 update -qq
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
  debootstrap \
  libseccomp-dev \
  pkg-config \
  nftables \
  iproute2 \
  tini \
  ca-certificates \
  >/dev/null
# The sandboxes' init (tini-static) is bind-mounted into every container.
test -x /usr/bin/tini-static
