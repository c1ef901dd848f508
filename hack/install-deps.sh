#!/usr/bin/env bash
# Installs what crius needs to build, run and be tested on Debian 12, as root. Idempotent: apt
# runs only when a package is missing.
set -euo pipefail

packages=(
    gcc libc6-dev pkg-config   # bundled SQLite and other C parts of crates
    containernetworking-plugins # bridge, host-local, loopback, portmap (in /usr/lib/cni)
    iproute2 iptables          # pod networking and port mappings
    docker-registry            # the local registries the image tests push to
    apache2-utils              # htpasswd, for the registry with basic auth
    busybox-static             # test images are built from it
    zstd attr                  # zstd layers; getfattr to check unpacked xattrs
    sqlite3 ca-certificates curl python3
    openssl                    # a self-signed certificate for the streaming TLS test
)

if [[ $(id -u) != 0 ]]; then
    echo "install-deps: run as root (apt-get, namespaces, mounts)" >&2
    exit 1
fi

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "install-deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
    for d in "$HOME/.cargo/bin" /root/.cargo/bin /usr/local/cargo/bin; do
        [[ -x $d/cargo ]] && export PATH="$d:$PATH" && break
    done
fi
if ! command -v cargo >/dev/null; then
    echo "install-deps: cargo not found; crius needs a Rust toolchain (1.85 or newer, edition 2024)" >&2
    exit 1
fi
echo "install-deps: ok ($(cargo --version))"
