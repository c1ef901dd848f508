#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine (as root): installs what it needs, checks
# formatting and lints, starts the test registries and pushes the test images, then runs the
# unit tests and the end-to-end tests, which start real crius daemons on temporary roots and
# sockets and drive them over CRI (the host stage); then the VM stage (hack/vm-test.sh): the
# cgroup, driver and restart tests again in a Debian 12 guest with cgroup v2 and systemd as PID 1,
# once per cgroup driver. CRIUS_VM_STAGE=0 skips the VM stage.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS

bash hack/install-deps.sh
command -v cargo >/dev/null || export PATH="$HOME/.cargo/bin:$PATH"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
echo "== cargo build"
cargo build --locked --all-targets

# Test registries (plain and with basic auth) on free loopback ports, and the test images,
# built from busybox-static and pushed; both go when the suite ends.
work=$(mktemp -d /tmp/crius-test-registry.XXXXXX)
trap 'python3 hack/test-registry.py stop "$work"; rm -rf "$work"' EXIT
python3 hack/test-registry.py start "$work"
. "$work/env"

echo "== cargo test (unit + e2e)"
cargo test --locked --lib --bins --tests
python3 hack/test-registry.py stop "$work"
echo "== host stage: $((SECONDS - started)) s"

if [[ ${CRIUS_VM_STAGE:-1} != 0 ]]; then
    echo "== VM stage (hack/vm-test.sh)"
    bash hack/vm-test.sh
fi
echo "== test suite: $((SECONDS - started)) s"
