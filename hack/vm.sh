#!/usr/bin/env bash
# A throw-away Debian 12 VM node: cgroup v2 only, systemd as PID 1, booted under qemu with the
# repository shared in at the same path, to run one command in it as root.
#
#   hack/vm.sh run [OPTIONS] -- COMMAND...   boot the guest, run COMMAND, print its output,
#                                            power off; exit with COMMAND's status
#   hack/vm.sh image                         build the guest image if needed; print its dir
#   hack/vm.sh clean                         remove the cached images
#
# run OPTIONS:
#   --driver cgroupfs|systemd   the cgroup driver crius is to use in the guest: written to the
#                               guest's /etc/crius/config.toml and exported to COMMAND as
#                               CRIUS_E2E_CGROUP_DRIVER (read by the e2e harness)
#   --share DIR                 share another host directory, at the same path (repeatable)
#   --timeout SECS              kill the guest and fail after SECS (default 3600,
#                               env CRIUS_VM_TIMEOUT); the boot counts
#   --cpus N, --memory MIB      guest size (default 2 and 2048; env CRIUS_VM_CPUS, CRIUS_VM_MEMORY)
#
# The image (a Debian 12 root made by debootstrap, with the packages below and Debian's kernel)
# is built once, ~2-3 min, into $CRIUS_VM_CACHE (default /var/cache/crius-vm) under a key
# hashed from what goes into it: the package list and the code of the build functions of this
# script, so editing either builds a new image (and removes the old one). Each run boots from a
# qcow2 overlay in a temporary directory that is deleted afterwards: nothing of one run survives
# into the next.
#
# Inside the guest, COMMAND runs from a systemd service (crius-vm-run.service) once
# multi-user.target is reached, in the directory vm.sh was called from when that directory is
# shared (else /root), with HOME=/root and a root PATH; its stdout and stderr come back over a
# virtio serial port and are printed as they come, its exit status through the shared run
# directory. Pass environment variables with `env NAME=VALUE COMMAND...`. The guest console
# (kernel and systemd messages) is printed when the guest fails or times out, and kept in
# $CRIUS_VM_CONSOLE_LOG when that is set.
#
# Acceleration: CRIUS_VM_ACCEL=kvm|tcg|auto (default auto). auto uses KVM only where a short
# probe boot with it really works (the result is cached per qemu, host kernel and guest
# kernel); /dev/kvm exists on hosts where qemu aborts or hangs under KVM. TCG runs multi-threaded.
#
# Host requirements (installed when missing by hack/install-deps.sh --vm, Debian 12, as root):
# qemu-system-x86 and qemu-utils from bookworm-backports, debootstrap, e2fsprogs.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${CRIUS_VM_CACHE:-/var/cache/crius-vm}
SUITE=bookworm

# Guest packages: what crius and the e2e suite need at run time (hack/install-deps.sh lists
# the same for the host, less the build tools), the test registries' tools
# (hack/test-registry.py), and a kernel with its initramfs. debootstrap's minbase brings the rest.
GUEST_PACKAGES=(
    systemd systemd-sysv dbus udev kmod     # systemd as PID 1, with D-Bus for systemctl and the systemd driver
    linux-image-amd64 initramfs-tools       # the kernel qemu boots directly (its initramfs loads virtio_blk)
    iproute2 iptables                       # pod networking and port mappings
    containernetworking-plugins             # bridge, host-local, loopback, portmap (in /usr/lib/cni)
    docker-registry apache2-utils           # test registries, one with htpasswd basic auth
    busybox-static                          # test images are built from it
    python3                                 # hack/test-registry.py
    zstd attr openssl ca-certificates curl sqlite3
    libseccomp2                             # crius links it
    procps psmisc util-linux netbase less   # ps, kill, nsenter, /etc/protocols: debugging and iptables
)

# ---------------------------------------------------------------------------- helpers

die() {
    echo "vm: $*" >&2
    exit 1
}

log() {
    echo "vm: $*" >&2
}

# The Debian mirror the host's apt already uses (reachable from here), else deb.debian.org.
debian_mirror() {
    if [[ -n ${CRIUS_VM_MIRROR:-} ]]; then
        echo "$CRIUS_VM_MIRROR"
        return
    fi
    local uri
    uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null |
        grep -v '^\s*#' | grep -oE '(https?://[^ ]+/debian)/?( |$)' | grep -v security | head -n 1 | tr -d ' ') || true
    echo "${uri:-http://deb.debian.org/debian}"
}

# Installs the host tools vm.sh needs when they are missing (hack/install-deps.sh --vm: qemu
# from bookworm-backports, debootstrap, e2fsprogs).
ensure_host_tools() {
    local tool
    for tool in qemu-system-x86_64 qemu-img debootstrap mkfs.ext4; do
        command -v "$tool" >/dev/null || {
            bash "$REPO/hack/install-deps.sh" --vm
            return
        }
    done
}

# ---------------------------------------------------------------------------- the image
#
# Everything from here to "end of the image inputs" is hashed into the image key (by
# `declare -f`), together with GUEST_PACKAGES and IMAGE_FORMAT: change any of it and the next
# run builds a new image.
IMAGE_FORMAT=1

# Files of the guest image, written into ROOT.
write_guest_files() {
    local root=$1
    echo crius-vm >"$root/etc/hostname"
    printf '127.0.0.1\tlocalhost crius-vm\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
    # Root on the virtio disk; the disk is a throw-away overlay, so no fsck.
    echo '/dev/vda / ext4 rw,noatime 0 0' >"$root/etc/fstab"
    # User-mode networking: DHCP from qemu's slirp, its DNS forwarder.
    mkdir -p "$root/etc/systemd/network"
    printf '[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\n' >"$root/etc/systemd/network/20-wired.network"
    echo 'nameserver 10.0.2.3' >"$root/etc/resolv.conf"
    # A small initramfs (TCG takes ~10 s to unpack Debian's default one): only the modules
    # that mount the root fs (virtio_blk) and the shares (9p), loaded at boot; udev loads the
    # rest from the root fs.
    mkdir -p "$root/etc/initramfs-tools/conf.d"
    echo 'MODULES=list' >"$root/etc/initramfs-tools/conf.d/crius-vm.conf"
    printf '%s\n' virtio_pci virtio_blk virtio_console ext4 crc32c_generic 9p 9pnet_virtio \
        >>"$root/etc/initramfs-tools/modules"
    # Modules udev would load for emulated hardware no test uses (KVM for the CPU's vmx/svm,
    # the ICH9 watchdog and LPC, the PC speaker): a shorter boot.
    printf 'blacklist %s\n' kvm kvm_intel kvm_amd iTCO_wdt iTCO_vendor_support lpc_ich pcspkr joydev serio_raw \
        >"$root/etc/modprobe.d/crius-vm-blacklist.conf"
    # The command runner: started once the system is up, it mounts the run directory the host
    # shares (tag crius-run) and runs the script vm.sh put there; then it powers off, whatever
    # happened, so a failing command never leaves the guest running until the timeout.
    cat >"$root/usr/local/sbin/crius-vm-run" <<'EOF'
#!/bin/bash
# Runs the host's /run/crius-vm/guest.sh (see hack/vm.sh), then powers off at once: the disk
# is a throw-away overlay and the status file is already written through 9p.
set -uo pipefail
trap 'sync; systemctl poweroff --force --force' EXIT
mkdir -p /run/crius-vm
if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 crius-run /run/crius-vm; then
    echo "crius-vm-run: cannot mount the run directory (9p tag crius-run)" >/dev/console
    exit 1
fi
bash /run/crius-vm/guest.sh
EOF
    chmod 0755 "$root/usr/local/sbin/crius-vm-run"
    cat >"$root/etc/systemd/system/crius-vm-run.service" <<'EOF'
[Unit]
Description=Run the command hack/vm.sh passes in
After=multi-user.target
Wants=network.target

[Service]
Type=exec
ExecStart=/usr/local/sbin/crius-vm-run
# As a root shell on a node: no service limits on files or tasks.
LimitNOFILE=1048576
LimitNPROC=infinity
TasksMax=infinity
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
EOF
    # Nothing that runs by itself: the suite starts its own registries, and no timer should
    # fire during a test. No login prompt on the console either.
    local unit
    for unit in docker-registry.service serial-getty@ttyS0.service getty@tty1.service \
        systemd-networkd-wait-online.service e2scrub_reap.service systemd-pstore.service \
        apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer \
        fstrim.timer systemd-tmpfiles-clean.timer; do
        ln -sf /dev/null "$root/etc/systemd/system/$unit"
    done
}

# Runs inside a private mount namespace: installs GUEST_PACKAGES into ROOT in a chroot.
install_guest_packages() {
    local root=$1
    shift
    mount -t proc proc "$root/proc"
    mount -t sysfs sysfs "$root/sys"
    mount --rbind /dev "$root/dev"
    # No service starts in the chroot.
    printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
    chmod 0755 "$root/usr/sbin/policy-rc.d"
    chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
    chroot "$root" apt-get clean
    chroot "$root" systemctl enable systemd-networkd.service crius-vm-run.service
    rm -f "$root/usr/sbin/policy-rc.d"
}

# Builds the image into DIR: disk.raw (ext4, sparse), vmlinuz, initrd.img.
build_image() {
    local dir=$1 mirror=$2 root=$1/root
    mkdir -p "$root/etc/dpkg/dpkg.cfg.d"
    # No documentation, man pages or translations in the guest.
    printf 'path-exclude=/usr/share/doc/*\npath-include=/usr/share/doc/*/copyright\npath-exclude=/usr/share/man/*\npath-exclude=/usr/share/info/*\npath-exclude=/usr/share/locale/*\npath-include=/usr/share/locale/locale.alias\n' \
        >"$root/etc/dpkg/dpkg.cfg.d/01-crius-vm-nodoc"
    log "debootstrap $SUITE from $mirror"
    debootstrap --variant=minbase --include=systemd,systemd-sysv,udev,kmod,dbus "$SUITE" "$root" "$mirror" \
        >"$dir/debootstrap.log" 2>&1 || {
        tail -n 30 "$dir/debootstrap.log" >&2
        die "debootstrap failed (log: $dir/debootstrap.log)"
    }
    printf 'deb %s %s main\n' "$mirror" "$SUITE" >"$root/etc/apt/sources.list"
    mkdir -p "$root/usr/local/sbin" "$root/etc/initramfs-tools"
    write_guest_files "$root"
    log "installing the guest packages and the kernel"
    unshare --mount --propagation private -- bash -c \
        "set -euo pipefail; $(declare -f install_guest_packages); install_guest_packages \"\$@\"" \
        bash "$root" "${GUEST_PACKAGES[@]}" >"$dir/packages.log" 2>&1 || {
        tail -n 30 "$dir/packages.log" >&2
        die "installing the guest packages failed (log: $dir/packages.log)"
    }
    # A fixed machine id: the first boot of every run is not a "first boot" (no firstboot prompts).
    chroot "$root" systemd-machine-id-setup >/dev/null 2>&1 || true
    # The kernel, booted directly by qemu.
    cp "$(ls "$root"/boot/vmlinuz-* | sort -V | tail -n 1)" "$dir/vmlinuz"
    cp "$(ls "$root"/boot/initrd.img-* | sort -V | tail -n 1)" "$dir/initrd.img"
    # Drivers no VM node uses (graphics, sound, media, wireless, infiniband): a smaller image.
    local kdir
    for kdir in "$root"/lib/modules/*/kernel; do
        rm -rf "$kdir"/sound "$kdir"/drivers/{gpu,media,infiniband,staging,bluetooth,net/wireless} "$kdir"/net/{wireless,mac80211,bluetooth}
        chroot "$root" depmod "$(basename "$(dirname "$kdir")")"
    done
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/*.log
    # A sparse 12 GiB disk: room for the pulls, bundles and logs of a test run.
    mkfs.ext4 -q -F -L crius-vm -d "$root" "$dir/disk.raw" 12G >/dev/null
    rm -rf "$root"
}
# ---------------------------------------------------------------------------- end of the image inputs

image_key() {
    {
        echo "format $IMAGE_FORMAT suite $SUITE"
        printf '%s\n' "${GUEST_PACKAGES[@]}"
        declare -f write_guest_files install_guest_packages build_image
    } | sha256sum | cut -c1-16
}

# Prints the directory of a ready image, building it first when there is none.
ensure_image() {
    local key dir
    key=$(image_key)
    dir=$CACHE/image-$key
    mkdir -p "$CACHE"
    exec {build_lock}>"$CACHE/build.lock"
    flock "$build_lock"
    if [[ ! -f $dir/ready ]]; then
        local tmp=$CACHE/build-$key.$$ started=$SECONDS
        rm -rf "$tmp"
        mkdir -p "$tmp"
        log "building the guest image $key (once; cached in $CACHE)"
        ( build_image "$tmp" "$(debian_mirror)" ) || { rm -rf "$tmp"; exit 1; }
        rm -rf "$dir"
        mv "$tmp" "$dir"
        touch "$dir/ready"
        log "guest image built in $((SECONDS - started)) s: $dir ($(du -sh "$dir" | cut -f1) on disk)"
        # Older images go, unless a run still boots from one (it holds its lock shared).
        local old
        for old in "$CACHE"/image-*; do
            [[ $old == "$dir" || ! -d $old ]] && continue
            if flock -xn "$old/lock" true 2>/dev/null || [[ ! -e $old/lock ]]; then
                log "removing the old image $(basename "$old")"
                rm -rf "$old"
            fi
        done
    fi
    flock -u "$build_lock"
    exec {build_lock}>&-
    echo "$dir"
}

# ---------------------------------------------------------------------------- acceleration

# kvm where a probe boot of the guest kernel under KVM reaches its panic (no root disk given)
# within a few seconds; tcg otherwise. Cached per qemu, host kernel and guest kernel.
choose_accel() {
    local image=$1
    case ${CRIUS_VM_ACCEL:-auto} in
        kvm | tcg) echo "$CRIUS_VM_ACCEL"; return ;;
        auto) ;;
        *) die "CRIUS_VM_ACCEL must be kvm, tcg or auto" ;;
    esac
    if [[ ! -r /dev/kvm || ! -w /dev/kvm ]]; then
        echo tcg
        return
    fi
    local key cached
    key=$({ qemu-system-x86_64 --version; uname -r; sha256sum <"$image/vmlinuz"; } | sha256sum | cut -c1-16)
    cached=$CACHE/accel-$key
    if [[ -f $cached ]]; then
        cat "$cached"
        return
    fi
    local probe result=tcg
    probe=$(mktemp -d /tmp/crius-vm-probe.XXXXXX)
    timeout -k 2 20 qemu-system-x86_64 -accel kvm -cpu host -m 256 -nodefaults -no-user-config \
        -display none -no-reboot -kernel "$image/vmlinuz" \
        -append "console=ttyS0 panic=-1 root=/dev/nonexistent" \
        -serial "file:$probe/console" >"$probe/qemu.log" 2>&1 || true
    grep -q "Kernel panic" "$probe/console" 2>/dev/null && result=kvm
    rm -rf "$probe"
    log "KVM probe: using $result"
    echo "$result" >"$cached"
    echo "$result"
}

# ---------------------------------------------------------------------------- run

run_vm() {
    local driver="" timeout=${CRIUS_VM_TIMEOUT:-3600} cpus=${CRIUS_VM_CPUS:-2} memory=${CRIUS_VM_MEMORY:-2048}
    local shares=("$REPO")
    while (($#)); do
        case $1 in
            --driver) driver=${2:?--driver needs a value}; shift 2 ;;
            --share) shares+=("$(cd "${2:?--share needs a directory}" && pwd)"); shift 2 ;;
            --timeout) timeout=${2:?--timeout needs seconds}; shift 2 ;;
            --cpus) cpus=${2:?}; shift 2 ;;
            --memory) memory=${2:?}; shift 2 ;;
            --) shift; break ;;
            *) die "unknown option $1 (usage: vm.sh run [--driver D] [--share DIR]... -- COMMAND...)" ;;
        esac
    done
    (($#)) || die "no command (usage: vm.sh run [OPTIONS] -- COMMAND...)"
    case $driver in
        "" | cgroupfs | systemd) ;;
        *) die "--driver must be cgroupfs or systemd" ;;
    esac
    [[ $timeout =~ ^[0-9]+$ ]] || die "--timeout must be whole seconds"

    local image accel
    image=$(ensure_image)
    accel=$(choose_accel "$image")
    # This run boots from the image: it is not removed under us.
    exec {image_lock}>"$image/lock"
    flock -s "$image_lock"

    local run
    run=$(mktemp -d /tmp/crius-vm-run.XXXXXX)
    qemu_pid="" tail_pid="" # globals: cleanup_run ends them
    # shellcheck disable=SC2064 # expanded now, on purpose
    trap "cleanup_run '$run'" EXIT
    qemu-img create -q -f qcow2 -F raw -b "$image/disk.raw" "$run/overlay.qcow2"

    # The guest's side of the run: shares, configuration, environment, the command.
    local cwd=/root share i=0 mounts="" fsdevs=()
    for share in "${shares[@]}"; do
        [[ $PWD == "$share" || $PWD == "$share"/* ]] && cwd=$PWD
        mounts+="share$i $(printf '%q' "$share")"$'\n'
        fsdevs+=(-fsdev "local,id=share$i,path=$share,security_model=passthrough,multidevs=remap"
            -device "virtio-9p-pci,fsdev=share$i,mount_tag=share$i")
        i=$((i + 1))
    done
    printf '%s' "$mounts" >"$run/shares"
    {
        echo 'set -uo pipefail'
        echo 'echo "$(cut -d" " -f1 /proc/uptime)" >/run/crius-vm/booted'
        # The output port appears once udev has seen it.
        echo 'out=/dev/virtio-ports/crius.out'
        echo 'for _ in $(seq 1 100); do [[ -e $out ]] && break; sleep 0.1; done'
        echo '[[ -e $out ]] || out=/dev/console'
        echo 'while read -r tag path; do'
        echo '    mkdir -p "$path"'
        echo '    mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 "$tag" "$path" ||'
        echo '        { echo "vm: cannot mount the share $path" >"$out"; echo 125 >/run/crius-vm/status; exit 1; }'
        echo 'done </run/crius-vm/shares'
        if [[ -n $driver ]]; then
            echo 'mkdir -p /etc/crius'
            echo "echo 'cgroup_driver = \"$driver\"' >/etc/crius/config.toml"
            echo "export CRIUS_E2E_CGROUP_DRIVER=$driver"
        fi
        echo 'export HOME=/root LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
        echo "cd $(printf '%q' "$cwd")"
        printf '%q ' "$@"
        echo '</dev/null >"$out" 2>&1'
        echo 'status=$?'
        echo 'echo "$(cut -d" " -f1 /proc/uptime)" >/run/crius-vm/ended'
        echo 'echo "$status" >/run/crius-vm/status.tmp && mv /run/crius-vm/status.tmp /run/crius-vm/status'
    } >"$run/guest.sh"
    : >"$run/output"

    local cpu=max
    [[ $accel == kvm ]] && cpu=host
    local accel_opt=kvm
    [[ $accel == tcg ]] && accel_opt=tcg,thread=multi
    log "booting the guest ($accel, $cpus CPUs, $memory MiB; timeout ${timeout} s)"
    local started=$SECONDS
    timeout -k 10 "$timeout" qemu-system-x86_64 \
        -name crius-vm -machine q35,sata=off,smbus=off,vmport=off -accel "$accel_opt" -cpu "$cpu" -smp "$cpus" -m "$memory" \
        -nodefaults -no-user-config -display none -no-reboot \
        -kernel "$image/vmlinuz" -initrd "$image/initrd.img" \
        -append "console=ttyS0 root=/dev/vda rw panic=-1 mitigations=off audit=0 systemd.unified_cgroup_hierarchy=1 systemd.firstboot=off" \
        -drive "file=$run/overlay.qcow2,if=virtio,format=qcow2,cache=unsafe,discard=unmap" \
        -serial "file:$run/console.log" \
        -device virtio-serial-pci -chardev "file,id=out,path=$run/output" \
        -device virtserialport,chardev=out,name=crius.out \
        -fsdev "local,id=run,path=$run,security_model=passthrough" \
        -device virtio-9p-pci,fsdev=run,mount_tag=crius-run \
        "${fsdevs[@]}" \
        -netdev user,id=net0 -device virtio-net-pci,netdev=net0 \
        -device virtio-rng-pci \
        </dev/null >"$run/qemu.log" 2>&1 &
    qemu_pid=$!
    tail -n +1 -f --pid="$qemu_pid" "$run/output" &
    tail_pid=$!
    local qemu_status=0
    wait "$qemu_pid" || qemu_status=$?
    qemu_pid=""
    wait "$tail_pid" || true
    tail_pid=""

    if [[ -n ${CRIUS_VM_CONSOLE_LOG:-} ]]; then
        cp "$run/console.log" "$CRIUS_VM_CONSOLE_LOG"
    fi
    if [[ ! -f $run/status ]]; then
        if ((qemu_status == 124 || qemu_status == 137)); then
            log "the guest did not finish within $timeout s; it was killed"
        else
            log "the guest stopped without the command's status (qemu exit status $qemu_status)"
        fi
        log "qemu said:"
        sed 's/^/    /' "$run/qemu.log" >&2
        log "last lines of the guest console:"
        tail -n 60 "$run/console.log" | sed 's/^/    /' >&2
        exit 124
    fi
    local status booted ended
    status=$(cat "$run/status")
    booted=$(cat "$run/booted" 2>/dev/null || echo '?')
    ended=$(cat "$run/ended" 2>/dev/null || echo '?')
    log "booted in ${booted} s; the command took $(awk -v a="$booted" -v b="$ended" 'BEGIN { printf "%.1f", b - a }') s; status $status; $((SECONDS - started)) s in all"
    if [[ $status != 0 ]]; then
        log "last lines of the guest console:"
        tail -n 25 "$run/console.log" | sed 's/^/    /' >&2
    fi
    exit "$status"
}

# Ends what this run started (by pid) and removes its directory with the overlay.
cleanup_run() {
    local run=$1
    [[ -n ${tail_pid:-} ]] && kill "$tail_pid" 2>/dev/null
    [[ -n ${qemu_pid:-} ]] && kill "$qemu_pid" 2>/dev/null && wait "$qemu_pid" 2>/dev/null
    rm -rf "$run"
}

# ---------------------------------------------------------------------------- main

[[ $(id -u) == 0 ]] || die "run as root (debootstrap, chroot, the run's files)"
case ${1:-} in
    run)
        shift
        ensure_host_tools
        run_vm "$@"
        ;;
    image)
        ensure_host_tools
        ensure_image
        ;;
    clean)
        rm -rf "$CACHE"
        log "removed $CACHE"
        ;;
    *)
        sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
        exit 2
        ;;
esac
