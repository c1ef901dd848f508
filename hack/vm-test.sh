#!/usr/bin/env bash
# The VM stage of the test suite (hack/test.sh runs it after the host stage): the e2e tests
# that touch cgroups, systemd and restarts, again on a node like most Kubernetes nodes —
# cgroup v2 only, systemd as PID 1, crius installed as a systemd service — in a throw-away
# Debian 12 guest (hack/vm.sh).
#
#   hack/vm-test.sh        build the e2e tests (a no-op after the host stage) and the release
#                          binary, then for each driver in CRIUS_VM_DRIVERS boot a guest and
#                          run the subset below
#
# In the guest (the repository is shared at the same path, so the e2e binary and
# target/release/crius resolve there): install target/release/crius as the system service from
# hack/crius.service (hack/install-service.sh), start the test registries, run the subset with
# the test daemons on the release binary too (CRIUS_E2E_BINARY: unoptimised, the daemon's
# digests and layer unpacking take minutes per pull under TCG), then the service test
# (e2e/service.rs, CRIUS_E2E_SERVICE=1), whose output must show it ran; last, no unit of crius's
# (`crius-*`, the tests' `crius_e2e*` slices) may be left in systemd.
#
# Environment:
#   CRIUS_VM_DRIVERS     cgroup drivers to run the subset with, one guest each (default
#                        "cgroupfs systemd")
#   CRIUS_VM_TESTS       replaces the subset (exact test names, space-separated)
#   CRIUS_VM_ARTIFACTS   a host directory: the daemon logs of the guest's tests are copied to
#                        <dir>/<driver>/ for a post-mortem
#   CRIUS_VM_TEST_TIMEOUT  seconds per guest, boot included (default 2400)
#   and hack/vm.sh's: CRIUS_VM_ACCEL, CRIUS_VM_CPUS, CRIUS_VM_MEMORY, CRIUS_VM_CACHE
set -euo pipefail
cd "$(dirname "$0")/.."

# The subset, by exact test name: what depends on the cgroup hierarchy, the cgroup driver, the
# init system or process survival across daemon restarts. Image pulls, registries, input
# validation, seccomp, the gRPC clients and the streaming protocols' framing behave the same on
# any node and stay on the host; the 200-pod churn is too slow under TCG. Every test's daemon
# checks on teardown that it left no process, mount, cgroup, veth, iptables rule or IP lease.
TESTS=(
    # Pods: namespaces, pod cgroups under a parent crius creates and removes, CNI, undo.
    sandbox::a_pod_gets_its_namespaces_network_and_files_and_leaves_nothing
    sandbox::host_network_pods_skip_cni_and_keep_the_host_hostname
    sandbox::a_shared_pid_namespace_has_its_own_pid_1
    sandbox::a_failing_network_undoes_everything
    # Containers: cgroups joined at start, the cgroup namespace and /sys/fs/cgroup inside,
    # exit codes and reasons, stop signals.
    containers::two_containers_share_the_pods_namespaces_log_and_exec
    containers::exit_codes_reasons_and_stop_signals
    containers::security_context_users_caps_readonly_masks_and_seccomp
    # Limits and OOMKilled: memory.max and the oom_kill count of memory.events on v2.
    containers::a_memory_limit_is_enforced_and_the_oom_kill_reported
    # Limits as kubelet sends them: QoS parents, hugetlb and other controllers to skip.
    kubelet_shapes::burstable_and_besteffort_pods_as_kubelet_sends_them
    kubelet_shapes::a_pod_cgroup_crius_makes_skips_missing_controllers
    # Stats from cgroup v2 files; UpdateContainerResources on a running container.
    stats::stats_follow_cpu_memory_disk_and_network
    stats::resources_update_live_and_a_refused_change_keeps_the_old_limits
    # Exec, attach, port-forward: exec joins the container's cgroup.
    streaming::exec_over_spdy_and_websocket
    streaming::attach_to_output_stdin_and_terminals
    streaming::port_forward_into_the_pod
    # Restart survival: pods and containers outlive the daemon; exits while it is down.
    sandbox::pods_survive_a_daemon_crash_and_notice_a_dead_agent
    containers::containers_survive_a_daemon_crash_and_die_with_their_agent
    lifecycle::exits_while_the_daemon_is_down_are_replayed
    lifecycle::a_start_the_daemon_did_not_live_to_record_is_found_after_restart
    # A pod-level PID namespace: the agent is its PID 1 and the pod's one process, placed in
    # the pod's cgroup or scope, found again after a restart, orphaned to systemd when it ends.
    pid_namespace::pod_pid_namespace_has_the_agent_as_pid_1_and_only_runtime_process
    pid_namespace::pod_pid_agent_ends_the_pod_on_sigterm_from_the_host
    pid_namespace::pod_pid_pods_recorded_before_the_agent_was_pid_1_or_half_recorded_still_stop
    # Device rules (v2: the eBPF device program), v2 limits inside (cpu.max, memory.max,
    # pids.max enforced), the systemd driver's scopes and slices, gone with their pods.
    cgroups::devices_outside_the_rules_cannot_be_opened_and_granted_ones_can
    cgroups::v2_limits_are_visible_inside_and_pids_max_is_enforced
    cgroups::the_systemd_driver_runs_each_pod_and_container_in_a_scope_of_the_kubelet_slice
    # The driver the runtime reports to kubelet.
    runtime_info::runtime_config_reports_the_configured_cgroup_driver
    # User namespaces on Debian 12's kernel (6.1): idmapped overlay layers and volumes on
    # ext4, the pod's namespaces owned by its user namespace, restart survival.
    userns::a_user_namespaced_pod_is_root_only_over_what_it_owns
    userns::a_user_namespaced_pod_sharing_pids_survives_a_daemon_crash
)
SERVICE_TEST=service::the_service_restarts_under_running_pods_and_leaves_nothing
SERVICE_RAN="crius.service test: ran to the end"

# ---------------------------------------------------------------------------- in the guest
in_guest() {
    local driver=$1 e2e=$2 binary=$3 artifacts=${4:-}
    local work status=0
    work=$(mktemp -d /tmp/crius-vm-test.XXXXXX)
    echo "== [$driver] cgroups: $(stat -fc %T /sys/fs/cgroup); PID 1: $(cat /proc/1/comm); root cgroup.subtree_control: $(cat /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null)"
    echo "== [$driver] test registries"
    python3 hack/test-registry.py start "$work" >"$work/registry.log" 2>&1 || {
        cat "$work/registry.log"
        return 1
    }
    # shellcheck disable=SC1091
    . "$work/env"
    # A drop-in (merged over config.toml) maps a registry name of the tests' own to the test
    # registry; the service test pulls by that name.
    mkdir -p /etc/crius/config.d
    printf '[registry.mirrors]\n"registry.crius-vm.test" = ["http://%s"]\n' "$CRIUS_TEST_REGISTRY" \
        >/etc/crius/config.d/50-vm-test-registry.toml
    echo "== [$driver] crius as a systemd service (hack/install-service.sh)"
    if ! bash hack/install-service.sh --binary "$binary"; then
        systemctl status crius --no-pager || true
        return 1
    fi
    # Kept test dirs (daemon and agent logs) for the failure report below.
    export CRIUS_E2E_KEEP=1 CRIUS_E2E_BINARY=$binary
    local tests=("${TESTS[@]}")
    [[ -n ${CRIUS_VM_TESTS:-} ]] && read -ra tests <<<"$CRIUS_VM_TESTS"
    echo "== [$driver] e2e subset: ${#tests[@]} tests"
    "$e2e" --exact --test-threads=2 "${tests[@]}" || status=1

    echo "== [$driver] the system service: $SERVICE_TEST"
    CRIUS_E2E_SERVICE=1 CRIUS_E2E_SERVICE_MIRROR=registry.crius-vm.test "$e2e" --exact --nocapture "$SERVICE_TEST" 2>&1 | tee "$work/service.out" || status=1
    if ! grep -qF "$SERVICE_RAN" "$work/service.out"; then
        echo "vm-test: the service test did not run to its end"
        status=1
    fi

    # Nothing of crius's left in systemd: no scope, no slice (crius.slice is the default
    # parent; the tests' slices are crius_e2e*).
    local units
    units=$(systemctl list-units --all --plain --no-legend --no-pager 'crius-*.scope' 'crius*.slice' 'crius_e2e*')
    if [[ -n $units ]]; then
        echo "vm-test: units left in systemd:"
        echo "$units"
        status=1
    fi

    if ((status != 0)); then
        echo "== [$driver] crius.service journal (last 60 lines)"
        journalctl -u crius.service -n 60 --no-pager || true
        echo "== [$driver] warnings and errors of the test daemons (last 80)"
        grep -h -E ' (WARN|ERROR) ' /tmp/crius-e2e-*/daemon.log 2>/dev/null | tail -n 80 || true
    fi
    if [[ -n $artifacts ]]; then
        local dest=$artifacts/$driver
        mkdir -p "$dest"
        local d
        for d in /tmp/crius-e2e-*/; do
            [[ -f $d/daemon.log ]] && cp "$d/daemon.log" "$dest/$(basename "$d").log"
        done
        journalctl -u crius.service --no-pager >"$dest/crius.service.log" 2>&1 || true
        echo "== [$driver] logs copied to $dest"
    fi
    python3 hack/test-registry.py stop "$work" >/dev/null 2>&1 || true
    return "$status"
}

if [[ ${1:-} == --in-guest ]]; then
    shift
    in_guest "$@"
    exit
fi

# ---------------------------------------------------------------------------- on the host
command -v cargo >/dev/null || export PATH="$HOME/.cargo/bin:$PATH"
started=$SECONDS
# The e2e test binary and target/debug/crius; built already by the host stage.
e2e=$(cargo test --locked --no-run --test e2e --message-format=json 2>/dev/null |
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "e2e" and m.get("executable"):
        print(m["executable"])')
[[ -x $e2e ]] || { echo "vm-test: no e2e test binary" >&2; exit 1; }
echo "== cargo build --release (the binary the guest runs)"
cargo build --locked --release --bin crius --bin crius-agent
binary=$PWD/target/release/crius

share=()
if [[ -n ${CRIUS_VM_ARTIFACTS:-} ]]; then
    mkdir -p "$CRIUS_VM_ARTIFACTS"
    CRIUS_VM_ARTIFACTS=$(cd "$CRIUS_VM_ARTIFACTS" && pwd)
    share=(--share "$CRIUS_VM_ARTIFACTS")
fi

failed=()
for driver in ${CRIUS_VM_DRIVERS:-cgroupfs systemd}; do
    echo "== VM stage, cgroup driver $driver"
    t=$SECONDS
    if bash hack/vm.sh run --driver "$driver" --timeout "${CRIUS_VM_TEST_TIMEOUT:-2400}" "${share[@]}" -- \
        env CRIUS_VM_TESTS="${CRIUS_VM_TESTS:-}" bash hack/vm-test.sh --in-guest "$driver" "$e2e" "$binary" "${CRIUS_VM_ARTIFACTS:-}"; then
        echo "== VM stage, cgroup driver $driver: passed in $((SECONDS - t)) s"
    else
        echo "== VM stage, cgroup driver $driver: FAILED after $((SECONDS - t)) s (guest output above)"
        failed+=("$driver")
    fi
done
echo "== VM stage: $((SECONDS - started)) s"
if ((${#failed[@]})); then
    echo "vm-test: failed with the cgroup driver(s): ${failed[*]}" >&2
    exit 1
fi
