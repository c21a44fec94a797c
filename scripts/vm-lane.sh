#!/usr/bin/env bash
# The VM lane: hutch where its users are. Boots Debian bookworm (systemd 252, the unified
# cgroup2 hierarchy, user@.service delegating pids memory cpu) under QEMU's software emulation,
# with the stock kernel (6.1) and, when bookworm-backports has one, a newer kernel; puts the
# freshly built hutch and the fixture images in it; runs scripts/vm-lane/in-vm.sh as root, as
# a user from a login session, as a user inside their manager's delegated scope and as a user
# without any session; prints the table of results; exits non-zero on any failure.
#
# Installs what it needs with apt (QEMU is unpacked from bookworm's .debs: apt's
# qemu-system-x86 can conflict with a newer qemu-utils on the host) and caches the QEMU
# files, the VM's root filesystem and the shifted images in $HUTCH_CACHE/vm. Run as root from
# the repository, after `cargo build --release --locked`.
# HUTCH_VM_KERNELS: which kernels to boot ("stock backports" by default); HUTCH_VM_BINARY:
# another hutch binary to check (e.g. an older build, to see what the lane catches). `--prepare` only
# installs and builds what the lane needs (QEMU, the VM's root filesystem, the images).
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$PWD
export HUTCH_CACHE=${HUTCH_CACHE:-/var/cache/hutch}
W=$HUTCH_CACHE/vm
R=$W/rootfs
MIRROR=${HUTCH_VM_MIRROR:-http://deb.debian.org/debian}
HUTCH=${HUTCH_VM_BINARY:-$SRC/target/x86_64-unknown-linux-gnu/release/hutch}
log() { printf 'vm-lane: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
((EUID == 0)) || die "run as root (it boots a VM from a root filesystem it builds)"
PREPARE_ONLY=$([[ ${1:-} == --prepare ]] && echo 1 || echo 0)
[[ -x $HUTCH || $PREPARE_ONLY == 1 ]] || die "no $HUTCH: cargo build --release --locked first"
mkdir -p "$W"

apt_install() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    log "installing ${missing[*]}"
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
}

# QEMU 7.2 from bookworm's .debs, unpacked; its shared libraries from apt.
get_qemu() {
    local Q=$W/qemu
    [[ -e $Q/.done ]] && return 0
    rm -rf "$Q" "$W/qemu-debs"
    mkdir -p "$Q" "$W/qemu-debs"
    local debs=(qemu-system-x86 qemu-system-common qemu-system-data seabios ipxe-qemu)
    (cd "$W/qemu-debs" && apt-get download "${debs[@]}" >&2) || { apt-get update -q >&2; (cd "$W/qemu-debs" && apt-get download "${debs[@]}" >&2); }
    local f deps
    for f in "$W"/qemu-debs/*.deb; do dpkg -x "$f" "$Q"; done
    # Their dependencies, minus the packages unpacked above.
    deps=$(for f in "$W"/qemu-debs/*.deb; do dpkg-deb -f "$f" Depends; done | tr ',' '\n' |
        sed -e 's/|.*//' -e 's/(.*)//' -e 's/:any//' -e 's/ //g' | grep -v -e '^$' -e '^qemu' -e '^seabios' -e '^ipxe' |
        sort -u)
    # shellcheck disable=SC2086
    apt_install $deps
    "$Q/usr/bin/qemu-system-x86_64" --version >&2
    touch "$Q/.done"
}

# Debian bookworm with systemd, a user session stack and the stock kernel; the newest
# bookworm-backports kernel beside it when the archive has one.
get_rootfs() {
    [[ -e $R/.done ]] && return 0
    rm -rf "$R"
    log "debootstrap of the VM's root filesystem (a minute or two)"
    debootstrap --variant=minbase \
        --include=systemd,systemd-sysv,dbus,dbus-user-session,libpam-systemd,uidmap,iproute2,procps,kmod,udev,initramfs-tools,linux-image-amd64,login,passwd,util-linux,ca-certificates,"$GUEST_PACKAGES" \
        bookworm "$R" "$MIRROR" >&2
    echo "deb $MIRROR bookworm-backports main" >"$R/etc/apt/sources.list.d/backports.list"
    mount -t proc proc "$R/proc"
    mount --bind /dev "$R/dev"
    if chroot "$R" apt-get update -q >&2 &&
        DEBIAN_FRONTEND=noninteractive chroot "$R" apt-get install -y -q --no-install-recommends -t bookworm-backports linux-image-amd64 >&2; then
        log "backports kernel: $(ls "$R"/boot/vmlinuz-* | tr '\n' ' ')"
    else
        log "no bookworm-backports kernel: only the stock one"
    fi
    umount "$R/dev" "$R/proc"
    chroot "$R" apt-get clean
    touch "$R/.done"
}

# Packages the checks need in the guest beyond the base (python3: hutch test's script bridge);
# added to a cached root filesystem that lacks them.
GUEST_PACKAGES=python3
guest_packages() {
    local p missing=()
    for p in ${GUEST_PACKAGES//,/ }; do
        chroot "$R" dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    log "installing ${missing[*]} in the VM's root filesystem"
    mount -t proc proc "$R/proc"
    chroot "$R" apt-get update -q >&2 &&
        DEBIAN_FRONTEND=noninteractive chroot "$R" apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
    local rc=$?
    umount "$R/proc"
    chroot "$R" apt-get clean
    return $rc
}

# The guest: an unprivileged user alice (uid 1000, subordinate ids, lingering: her manager
# runs) and bob (uid 1001, subordinate ids, no linger: no manager unless he logs in), and a
# unit that runs in-vm.sh once the system is up and powers off.
configure() {
    echo vmlane >"$R/etc/hostname"
    printf '127.0.0.1 localhost vmlane\n' >"$R/etc/hosts"
    printf '/dev/vda / ext4 rw,errors=remount-ro 0 1\n' >"$R/etc/fstab"
    chroot "$R" passwd -d root >/dev/null
    chroot "$R" id alice >/dev/null 2>&1 || chroot "$R" useradd -m -u 1000 -U -s /bin/bash alice
    chroot "$R" id bob >/dev/null 2>&1 || chroot "$R" useradd -m -u 1001 -U -s /bin/bash bob
    printf 'alice:100000:65536\nbob:300000:65536\n' | tee "$R/etc/subuid" >"$R/etc/subgid"
    mkdir -p "$R/var/lib/systemd/linger" && touch "$R/var/lib/systemd/linger/alice"
    mkdir -p "$R/opt/vmlane"
    install -m 0755 "$SRC/scripts/vm-lane/in-vm.sh" "$R/opt/vmlane/in-vm.sh"
    install -m 0644 "$SRC/scripts/vm-lane/oom.toml" "$R/opt/vmlane/oom.toml"
    install -m 0644 "$SRC/scripts/vm-lane/vmlane.service" "$R/etc/systemd/system/vmlane.service"
    ln -sf /etc/systemd/system/vmlane.service "$R/etc/systemd/system/multi-user.target.wants/vmlane.service"
    ln -sf /dev/null "$R/etc/systemd/system/serial-getty@ttyS0.service"
    ln -sf /dev/null "$R/etc/systemd/system/getty@tty1.service"
    ln -sf /dev/null "$R/etc/systemd/system/apt-daily.timer"
    ln -sf /dev/null "$R/etc/systemd/system/apt-daily-upgrade.timer"
    rm -rf "$R/results" && mkdir -m 1777 "$R/results"
    mkdir -p "$R/opt/hutch"
    install -m 0755 "$HUTCH" "$R/opt/hutch/hutch"
    rm -rf "$R/opt/hutch/examples" && mkdir -p "$R/opt/hutch/examples"
    cp -r "$SRC/examples/nginx" "$R/opt/hutch/examples/nginx"
    chmod -R a+rX "$R/opt/hutch"
}

# The busybox and Debian fixtures, for root as they are and shifted for alice and bob.
images() {
    local bb deb I=$R/var/cache/hutch/images stamp
    bb=$(bash fixtures/busybox-image.sh)
    deb=$(bash fixtures/debian-image.sh)
    stamp="$bb $deb"
    [[ -e $I/.done && $(cat "$I/.done") == "$stamp" ]] && return 0
    log "copying and shifting the images"
    rm -rf "$R/var/cache/hutch"
    mkdir -p "$I"
    chmod 755 "$R/var/cache/hutch" "$I"
    cp -a "$bb" "$I/busybox"
    cp -a "$deb" "$I/debian"
    local img who vuser vuid vsub
    for who in alice:1000:100000 bob:1001:300000; do
        IFS=: read -r vuser vuid vsub <<<"$who"
        for img in busybox debian; do
            (
                set -euo pipefail
                # shellcheck source=/dev/null
                source fixtures/lib.sh
                # shellcheck source=/dev/null
                source fixtures/shift.sh
                # The user exists only in the VM: its ids are given here.
                id() { case "$1" in -u | -g) echo "$vuid" ;; *) command id "$@" ;; esac; }
                subid_start() { echo "$vsub"; }
                shift_tree "$I/$img" "$I/$img@$vuid" "$vuser"
            )
        done
    done
    echo "$stamp" >"$I/.done"
}

# Boots kernel $1 with the disk; in-vm.sh's table lands in $W/out-$1.
boot() {
    local k=$1 version=$2 mode=$3 out=$W/out-$1
    rm -rf "$out" && mkdir -p "$out"
    local disk=$W/disk.img
    rm -f "$disk"
    echo "$mode" >"$R/opt/vmlane/mode"
    rm -rf "$R/results" && mkdir -m 1777 "$R/results"
    mkfs.ext4 -q -F -L root -d "$R" "$disk" 6G
    log "booting kernel $version ($mode set) under QEMU TCG"
    local t0=$SECONDS
    timeout "${HUTCH_VM_TIMEOUT:-1500}" "$W/qemu/usr/bin/qemu-system-x86_64" \
        -L "$W/qemu/usr/share/seabios" -L "$W/qemu/usr/share/qemu" \
        -machine pc,accel=tcg -cpu max -smp 2 -m 3072 -nographic -no-reboot -nic none \
        -kernel "$R/boot/vmlinuz-$version" -initrd "$R/boot/initrd.img-$version" \
        -append "root=/dev/vda rw console=ttyS0 systemd.unified_cgroup_hierarchy=1 panic=-1 quiet" \
        -drive "file=$disk,format=raw,if=virtio" </dev/null >"$out/serial.log" 2>&1 || log "qemu exited with $?"
    log "kernel $version: VM ran $((SECONDS - t0)) s"
    debugfs -R "rdump /results $out" "$disk" 2>/dev/null
    rm -f "$disk"
}

apt_install debootstrap e2fsprogs
get_qemu
get_rootfs
guest_packages
images
((PREPARE_ONLY)) && exit 0
configure
fail=0
for k in ${HUTCH_VM_KERNELS:-stock backports}; do
    case $k in
        stock) version=$(ls "$R/boot" | sed -n 's/^vmlinuz-\(6\.1\..*\)/\1/p' | sort -V | tail -1); mode=full ;;
        backports) version=$(ls "$R/boot" | sed -n 's/^vmlinuz-//p' | sort -V | tail -1); mode=short ;;
        *) die "HUTCH_VM_KERNELS: unknown kernel $k (stock, backports)" ;;
    esac
    if [[ -z $version || ($k == backports && $version == 6.1.*) ]]; then
        log "no $k kernel in the VM's root filesystem: skipped"
        continue
    fi
    boot "$k" "$version" "$mode"
    table=$W/out-$k/results/table.txt
    # An oops of the guest kernel under TCG (once in this session's six boots: an int3 oops in code being
    # live-patched, on a plain fork of the lane's shell) is QEMU's emulation, not a finding:
    # boot once more, saying so. A panic hutch caused would come back and fail the lane.
    if ! grep -qs '^DONE' "$table" && grep -qE 'Oops:|Kernel panic' "$W/out-$k/serial.log"; then
        log "kernel $version: the guest kernel oopsed ($(grep -m1 -oE 'Oops:.*|Kernel panic.*' "$W/out-$k/serial.log")); booting once more"
        grep -m1 -B2 -A12 -E 'Oops:|Kernel panic' "$W/out-$k/serial.log" >&2
        boot "$k" "$version" "$mode"
    fi
    echo
    echo "== kernel $version ($k), $mode set"
    if [[ -s $table ]] && grep -q '^DONE' "$table"; then
        grep -v '^DONE' "$table" | column -t -s'|'
        grep -q '|FAIL|' "$table" && fail=1
    else
        echo "no complete table from the VM (see $W/out-$k/serial.log)"
        tail -30 "$W/out-$k/serial.log"
        fail=1
    fi
done
exit $fail
