#!/usr/bin/env bash
# Installs crius as a systemd service on this machine (as root, systemd as PID 1) and starts it:
#
#   hack/install-service.sh [--binary PATH]
#
# - the binary: PATH, else a release build of this checkout (cargo build --release), as
#   /usr/local/bin/crius and crius-agent (replaced atomically: a running daemon keeps its old inode);
# - hack/crius.service as /etc/systemd/system/crius.service;
# - /etc/crius/ (a config.toml there is kept; none means all defaults, see README);
# - a default CNI bridge network (hack/default-cni.conflist) when /etc/cni/net.d has none;
# then `crius check`, daemon-reload, enable, and (re)start: the start returns once the daemon
# said READY=1, i.e. once the CRI socket serves. A restart keeps the pods running.
set -euo pipefail
cd "$(dirname "$0")/.."

binary=""
while (($#)); do
    case $1 in
        --binary) binary=${2:?--binary needs a path}; shift 2 ;;
        *) echo "usage: $0 [--binary PATH]" >&2; exit 2 ;;
    esac
done

if [[ $(id -u) != 0 ]]; then
    echo "install-service: run as root" >&2
    exit 1
fi
if [[ ! -d /run/systemd/system ]]; then
    echo "install-service: systemd is not PID 1 here; use hack/run.sh instead" >&2
    exit 1
fi

if [[ -z $binary ]]; then
    command -v cargo >/dev/null || export PATH="$HOME/.cargo/bin:$PATH"
    cargo build --release --locked
    binary=target/release/crius
fi
[[ -x $binary ]] || { echo "install-service: $binary is not an executable" >&2; exit 1; }
# The pod agent binary is built beside the daemon's.
agent=$(dirname "$binary")/crius-agent
[[ -x $agent ]] || { echo "install-service: $agent (the pod agent) is not an executable" >&2; exit 1; }

# Copy, then rename over the old binaries: a running daemon and running pod agents are not
# disturbed ("text file busy"); the daemon executes agents from its own sealed copy anyway.
install -m 0755 "$agent" /usr/local/bin/.crius-agent.new
mv -f /usr/local/bin/.crius-agent.new /usr/local/bin/crius-agent
install -m 0755 "$binary" /usr/local/bin/.crius.new
mv -f /usr/local/bin/.crius.new /usr/local/bin/crius
install -D -m 0644 README.md /usr/local/share/doc/crius/README.md
install -m 0644 hack/crius.service /etc/systemd/system/crius.service
install -d -m 0755 /etc/crius

mkdir -p /etc/cni/net.d
if ! ls /etc/cni/net.d/*.conf /etc/cni/net.d/*.conflist /etc/cni/net.d/*.json >/dev/null 2>&1; then
    install -m 0644 hack/default-cni.conflist /etc/cni/net.d/10-crius-bridge.conflist
    echo "install-service: installed /etc/cni/net.d/10-crius-bridge.conflist"
fi

/usr/local/bin/crius check || { echo "install-service: this host lacks what crius needs (above)" >&2; exit 1; }

systemctl daemon-reload
systemctl enable --quiet crius.service
# restart: starts a stopped service, and moves a running one onto the new binary.
if ! systemctl restart crius.service; then
    echo "install-service: crius.service did not start; its log:" >&2
    journalctl -u crius.service -n 40 --no-pager >&2 || true
    exit 1
fi
echo "install-service: crius $(/usr/local/bin/crius --version | cut -d' ' -f2) serves unix:///run/crius/crius.sock (systemctl status crius; journalctl -u crius)"
