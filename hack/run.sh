#!/usr/bin/env bash
# The main job: on a fresh Debian 12 machine (as root) install what crius needs, build it, and
# start the daemon on the default socket, unix:///run/crius/crius.sock.
#
#   hack/run.sh               build, install /usr/local/bin/crius and crius-agent, start in the background
#   hack/run.sh --foreground  the same, but run the daemon in this terminal
#   hack/run.sh stop          stop the daemon this script started
#
# Logs go to /var/log/crius.log; the daemon's pid is in /run/crius/crius.pid. A config file at
# /etc/crius/config.toml is used when present (see README). When /etc/cni/net.d holds no network
# config, hack/default-cni.conflist (a bridge on 10.85.0.0/16) is installed so pods get a network.
set -euo pipefail
cd "$(dirname "$0")/.."

PIDFILE=/run/crius/crius.pid
LOG=/var/log/crius.log
SOCKET=/run/crius/crius.sock

stop_daemon() {
    [[ -f $PIDFILE ]] || return 0
    local pid; pid=$(cat "$PIDFILE")
    # Only the daemon this script started: the pid must still be a crius daemon.
    if [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q '^/usr/local/bin/crius daemon'; then
        echo "run: stopping crius (pid $pid)"
        kill -TERM "$pid"
        for _ in $(seq 1 150); do [[ -d /proc/$pid ]] || break; sleep 0.1; done
    fi
    rm -f "$PIDFILE"
}

if [[ ${1:-} == stop ]]; then
    stop_daemon
    exit 0
fi

bash hack/install-deps.sh
command -v cargo >/dev/null || export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked
install -m 0755 target/release/crius /usr/local/bin/crius
install -m 0755 target/release/crius-agent /usr/local/bin/crius-agent

mkdir -p /etc/cni/net.d
if ! ls /etc/cni/net.d/*.conf /etc/cni/net.d/*.conflist /etc/cni/net.d/*.json >/dev/null 2>&1; then
    install -m 0644 hack/default-cni.conflist /etc/cni/net.d/10-crius-bridge.conflist
    echo "run: installed /etc/cni/net.d/10-crius-bridge.conflist"
fi

/usr/local/bin/crius check || { echo "run: this host lacks what crius needs (above)" >&2; exit 1; }

stop_daemon
if [[ ${1:-} == --foreground ]]; then
    exec /usr/local/bin/crius daemon
fi

mkdir -p /run/crius
setsid /usr/local/bin/crius daemon </dev/null >>"$LOG" 2>&1 &
echo $! >"$PIDFILE"
for _ in $(seq 1 100); do
    [[ -S $SOCKET ]] && break
    if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
        echo "run: crius exited; last log lines:" >&2
        tail -n 20 "$LOG" >&2
        exit 1
    fi
    sleep 0.1
done
[[ -S $SOCKET ]] || { echo "run: $SOCKET did not appear; see $LOG" >&2; exit 1; }
echo "run: crius $(crius --version | cut -d' ' -f2) is serving unix://$SOCKET (pid $(cat "$PIDFILE"), log $LOG)"
