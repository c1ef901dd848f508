#!/usr/bin/env bash
# Benchmarks (not tests): crius next to Debian's containerd 1.6, on this machine, in one run.
#   pull: a ~200 MB, 4-layer image from a local registry, cold, median of 5 pulls each.
#   pods: Run, Create+Start and Stop+Remove latency and memory, in rounds of 10 and 100 pods.
#   churn: 100 pods with a container each, created and removed by 20 concurrent clients, in both
#          pod shapes (a PID namespace per container, and one for the pod).
#   streaming: Exec (RPC + SPDY exec of `true`), ExecSync, PortForward + an HTTP GET, exec output MB/s.
set -euo pipefail
cd "$(dirname "$0")/.."

bash hack/install-deps.sh
if ! command -v containerd >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq containerd runc >/dev/null
fi
command -v cargo >/dev/null || export PATH="$HOME/.cargo/bin:$PATH"

work=$(mktemp -d /tmp/crius-bench.XXXXXX)
trap 'python3 hack/test-registry.py stop "$work"; rm -rf "$work"' EXIT
python3 hack/test-registry.py bench "$work"
. "$work/env"
cargo bench --locked --bench pull
cargo bench --locked --bench pods
cargo bench --locked --bench churn
cargo bench --locked --bench streaming
