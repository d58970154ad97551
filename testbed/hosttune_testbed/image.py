"""The guest image: Debian bookworm, booting from its own disk, cached by recipe hash.

    ensure_image() -> ${HOSTTUNE_CACHE:-/var/cache/hosttune}/images/<hash>/disk.qcow2
    ensure_image(firmware="uefi")  # the systemd-boot variant, booted with OVMF

Two firmware variants, each its own recipe (and hash):
  bios  MBR disk, one ext4 partition (/dev/vda1), GRUB in the MBR (the default)
  uefi  GPT disk: an ESP (vfat, /dev/vda1 on /boot/efi) + root ext4 (/dev/vda2); systemd-boot,
        kernel-install writing Boot Loader Specification entries from /etc/kernel/cmdline;
        no GRUB at all (a host hosttune must drive through kernel-install)

<hash> is the first 16 hex digits of the sha256 of the recipe (package lists, every file written
into the image, the build script, the SSH public key): change any of them and a new image is
built; otherwise the cached one is returned at once. The build runs in images/.build-<hash>-<pid>
and is renamed into place when complete; images/<hash>.lock keeps two builds from racing.

Steps (each reported on stderr): debootstrap minbase -> apt-get install the kernel, GRUB and tools
in a chroot (+ download-only the docker.io .debs, kept in /var/cache/apt/archives) -> write the
config files -> a raw disk built without loop devices (truncate, sfdisk, mkfs.ext4 -d, dd) ->
first boot with -kernel/-initrd, where the guest runs grub-install + update-grub (uefi: mkfs.vfat
on the ESP, bootctl install, kernel-install) -> power off -> qemu-img convert to qcow2.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from hosttune_testbed import paths
from hosttune_testbed.errors import GuestError
from hosttune_testbed.util import say

RECIPE_FORMAT = 1
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
HOSTNAME = "hosttune-guest"
# mitigations=off: under TCG the guest kernel's speculation mitigations (PTI and friends) are
# pure emulation cost - measured with the Intel-vendor CPU model, a reboot took 252 s of QEMU CPU
# time with them and 107 s without. The testbed is for topology and tuning, not for them.
KERNEL_CMDLINE = "console=ttyS0,115200n8 net.ifnames=0 biosdevname=0 mitigations=off"

DEBOOTSTRAP_INCLUDE = [
    "systemd-sysv", "openssh-server", "python3", "udev", "iproute2", "kmod", "ifupdown",
    "isc-dhcp-client", "procps",
]
CHROOT_PACKAGES = [
    "linux-image-amd64", "grub-pc-bin", "grub2-common", "irqbalance", "linux-cpupower",
    "numactl", "python3-venv", "ca-certificates", "curl", "sudo",
    "python3-apt",  # Ansible's apt module; it would otherwise install it on first use
    "dbus",  # systemd-logind needs it; without logind the ACPI power button is ignored
    "rsync",  # Ansible's synchronize module needs it on both ends
]
DOWNLOAD_ONLY = ["docker.io"]
DISK_MIB = 8192

FILES: dict[str, str] = {
    "/etc/fstab": "/dev/vda1 / ext4 defaults,errors=remount-ro 0 1\n",
    "/etc/hostname": f"{HOSTNAME}\n",
    "/etc/hosts": f"127.0.0.1 localhost\n127.0.1.1 {HOSTNAME}\n::1 localhost ip6-localhost\n",
    "/etc/network/interfaces": (
        "source /etc/network/interfaces.d/*\n\nauto lo\niface lo inet loopback\n\n"
        # allow-hotplug, not auto: with auto, ifupdown-pre.service runs `udevadm settle`, which
        # took 34 s of a 16-vCPU TCG boot; udev brings eth0 up as soon as it appears instead.
        "allow-hotplug eth0\niface eth0 inet dhcp\n"
    ),
    "/etc/ssh/sshd_config.d/10-hosttune-testbed.conf": (
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\n"
    ),
    "/etc/apt/apt.conf.d/10hosttune-keep-debs": (
        'Binary::apt::APT::Keep-Downloaded-Packages "true";\n'
    ),
    "/etc/default/grub": (
        "# Written by the hosttune testbed image build; drop-ins in /etc/default/grub.d/ win.\n"
        "GRUB_DEFAULT=0\n"
        "GRUB_TIMEOUT=1\n"
        "GRUB_DISTRIBUTOR=Debian\n"
        f'GRUB_CMDLINE_LINUX_DEFAULT="{KERNEL_CMDLINE}"\n'
        'GRUB_CMDLINE_LINUX=""\n'
        'GRUB_TERMINAL="serial console"\n'
        'GRUB_SERIAL_COMMAND="serial --speed=115200 --unit=0 --word=8 --parity=no --stop=1"\n'
        "GRUB_DISABLE_OS_PROBER=true\n"
    ),
    # Units that would compete with tests for 2 host CPUs or for the dpkg lock.
    "/etc/systemd/system/apt-daily.timer": "@/dev/null",
    "/etc/systemd/system/apt-daily-upgrade.timer": "@/dev/null",
    "/etc/systemd/system/e2scrub_all.timer": "@/dev/null",
    "/etc/systemd/system/fstrim.timer": "@/dev/null",
    "/etc/systemd/system/man-db.timer": "@/dev/null",
    "/etc/systemd/system/e2scrub_reap.service": "@/dev/null",  # 14-18 s of a TCG boot
    # A small initramfs: only what a virtio disk with ext4 needs (MODULES=most made udev in the
    # initramfs load every storage driver under TCG). The full system loads the rest.
    "/etc/initramfs-tools/conf.d/hosttune-testbed": "MODULES=list\n",
    "/etc/initramfs-tools/modules": "virtio_pci\nvirtio_blk\next4\ncrc32c_generic\n",
}

CHROOT_SCRIPT = """set -eu
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8
apt-get update -q
apt-get install -y -q --no-install-recommends {packages}
apt-get install -y -q --download-only {download_only}
ls /var/cache/apt/archives/*.deb | wc -l
"""

# Run in the guest on its first boot (direct kernel boot), then the guest powers off.
FIRST_BOOT_SCRIPT = """set -eu
grub-install --target=i386-pc /dev/vda
update-grub
grep -q 'console=ttyS0' /boot/grub/grub.cfg
python3 --version
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
fstrim -v / || true
sync
"""

FIRMWARES = ("bios", "uefi")
# The uefi variant: what differs from the bios one. The ESP is left empty (zeros) by the host
# build and formatted in the guest's first boot, so the host needs no dosfstools/mtools.
ESP_MIB = 256
ENTRY_TOKEN = "debian"  # a fixed token: the build's machine-id is wiped, a guest gets a new one
UEFI_KERNEL_CMDLINE = f"root=/dev/vda2 ro {KERNEL_CMDLINE}"
UEFI_PACKAGES = [p for p in CHROOT_PACKAGES if not p.startswith("grub")] + [
    "systemd-boot", "dosfstools",  # bootctl's EFI binaries + kernel-install hooks; mkfs/fsck.vfat
]
UEFI_FILES: dict[str, str] = {
    **{k: v for k, v in FILES.items() if k != "/etc/default/grub"},
    "/etc/fstab": (
        "/dev/vda2 / ext4 defaults,errors=remount-ro 0 1\n"
        # nofail: the build's first boot comes up before the ESP is formatted (else: emergency mode)
        "/dev/vda1 /boot/efi vfat umask=0077,nofail 0 2\n"
    ),
    # what kernel-install puts on the loader entry's options line (hosttune rewrites this file)
    "/etc/kernel/cmdline": f"{UEFI_KERNEL_CMDLINE}\n",
    "/etc/kernel/entry-token": f"{ENTRY_TOKEN}\n",
    "/etc/kernel/install.conf": "layout=bls\n",
}
# loader.conf: boot the newest entry of our token at once; the menu stays reachable with a key.
UEFI_FIRST_BOOT_SCRIPT = f"""set -eu
mkfs.vfat -F 32 -n ESP /dev/vda1
mkdir -p /boot/efi
mount /boot/efi
bootctl install --no-variables
mkdir -p /boot/efi/{ENTRY_TOKEN}
printf 'timeout 0\\ndefault {ENTRY_TOKEN}-*\\neditor no\\n' > /boot/efi/loader/loader.conf
kver=$(ls /boot/vmlinuz-* | sed 's,.*/vmlinuz-,,' | sort -V | tail -n 1)
kernel-install add "$kver" "/boot/vmlinuz-$kver"
cat /boot/efi/loader/entries/{ENTRY_TOKEN}-"$kver".conf
grep -q '^options .*root=/dev/vda2' /boot/efi/loader/entries/{ENTRY_TOKEN}-"$kver".conf
grep -q '^initrd ' /boot/efi/loader/entries/{ENTRY_TOKEN}-"$kver".conf
test -f /boot/efi/EFI/BOOT/BOOTX64.EFI
python3 --version
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
fstrim -v / || true
sync
"""


def host_mirrors() -> tuple[str, str]:
    """(main mirror, security mirror) from the host's apt sources; HOSTTUNE_MIRROR overrides."""
    main = os.environ.get("HOSTTUNE_MIRROR")
    security = os.environ.get("HOSTTUNE_SECURITY_MIRROR")
    found_main, found_sec = _parse_sources(Path("/etc/apt"))
    return (
        (main or found_main or DEFAULT_MIRROR).rstrip("/"),
        (security or found_sec or DEFAULT_SECURITY_MIRROR).rstrip("/"),
    )


def _parse_sources(etc_apt: Path) -> tuple[str | None, str | None]:
    entries: list[tuple[str, list[str]]] = []  # (uri, suites)
    files = []
    if (etc_apt / "sources.list").exists():
        files.append(etc_apt / "sources.list")
    files += sorted((etc_apt / "sources.list.d").glob("*.list"))
    for path in files:
        for line in path.read_text(errors="replace").splitlines():
            line = line.split("#", 1)[0].strip()
            if not line.startswith("deb "):
                continue
            words = [w for w in re.sub(r"\[[^]]*\]", "", line).split()[1:]]
            if len(words) >= 2:
                entries.append((words[0], [words[1]]))
    for path in sorted((etc_apt / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text(errors="replace")):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line:
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if "deb" not in fields.get("types", "").split():
                continue
            if fields.get("enabled", "yes").lower() == "no":
                continue
            for uri in fields.get("uris", "").split():
                entries.append((uri, fields.get("suites", "").split()))
    main = security = None
    for uri, suites in entries:
        if not uri.startswith(("http://", "https://")):
            continue
        if any(s.endswith("-security") for s in suites) or uri.rstrip("/").endswith("-security"):
            security = security or uri
        elif any(s.startswith(SUITE) for s in suites) and "/debian" in uri:
            main = main or uri
    return main, security


def sources_list(mirror: str, security: str) -> str:
    return (
        f"deb {mirror} {SUITE} main\n"
        f"deb {mirror} {SUITE}-updates main\n"
        f"deb {security} {SUITE}-security main\n"
    )


def _check_firmware(firmware: str) -> str:
    if firmware not in FIRMWARES:
        raise GuestError(f"unknown firmware {firmware!r} (one of {', '.join(FIRMWARES)})")
    return firmware


def recipe(firmware: str = "bios") -> dict[str, Any]:
    """Everything that decides the image's content (not the mirror: it is only transport).
    The bios recipe has no `firmware` key, so its hash (and cached image) predates the uefi one."""
    if _check_firmware(firmware) == "uefi":
        return {
            **recipe("bios"),
            "firmware": "uefi",
            "esp_mib": ESP_MIB,
            "packages": UEFI_PACKAGES,
            "files": UEFI_FILES,
            "first_boot_script": UEFI_FIRST_BOOT_SCRIPT,
            "kernel_cmdline": UEFI_KERNEL_CMDLINE,
        }
    return {
        "format": RECIPE_FORMAT,
        "suite": SUITE,
        "arch": "amd64",
        "variant": "minbase",
        "include": DEBOOTSTRAP_INCLUDE,
        "packages": CHROOT_PACKAGES,
        "download_only": DOWNLOAD_ONLY,
        "disk_mib": DISK_MIB,
        "files": FILES,
        "chroot_script": CHROOT_SCRIPT,
        "first_boot_script": FIRST_BOOT_SCRIPT,
        "kernel_cmdline": KERNEL_CMDLINE,
    }


def recipe_hash(rec: dict[str, Any], ssh_pubkey: str) -> str:
    """First 16 hex digits of sha256 over the canonical JSON of the recipe and the SSH key."""
    blob = json.dumps({"recipe": rec, "ssh_pubkey": ssh_pubkey.strip()}, sort_keys=True,
                      separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def images_dir() -> Path:
    path = paths.cache_dir() / "images"
    path.mkdir(parents=True, exist_ok=True)
    return path


def image_path(rec: dict[str, Any] | None = None) -> Path:
    digest = recipe_hash(rec or recipe(), paths.ssh_public_key())
    return images_dir() / digest / "disk.qcow2"


def ensure_image(rebuild: bool = False, firmware: str = "bios") -> Path:
    """The cached image's path, building it first if needed (or if `rebuild`)."""
    rec = recipe(firmware)
    target = image_path(rec)
    if target.exists() and not rebuild:
        return target
    digest = target.parent.name
    lock = images_dir() / f"{digest}.lock"
    say(f"image {digest}: waiting for the build lock {lock}")
    with paths.file_lock(lock):
        if target.exists() and not rebuild:
            say(f"image {digest}: built by another process meanwhile")
            return target
        _remove_stale_builds(digest)
        t0 = time.monotonic()
        build = images_dir() / f".build-{digest}-{os.getpid()}"
        try:
            _build(build, digest, rec)
            if target.parent.exists():
                old = images_dir() / f".old-{digest}-{os.getpid()}"
                target.parent.rename(old)
                _rmtree(old)
            build.rename(target.parent)
        except BaseException:
            _keep_failure_logs(build, digest)
            _rmtree(build)
            raise
        say(f"image {digest}: ready in {time.monotonic() - t0:.0f} s: {target}")
    return target


def _build(build: Path, digest: str, rec: dict[str, Any]) -> None:
    build.mkdir(parents=True)
    root = build / "root"
    mirror, security = host_mirrors()
    pubkey = paths.ssh_public_key()
    uefi = rec.get("firmware") == "uefi"
    packages, files = rec["packages"], rec["files"]

    say(f"image {digest}: [1/7] debootstrap {SUITE} minbase from {mirror} (about 1-3 min)")
    _run(["debootstrap", "--variant=minbase", f"--include={','.join(DEBOOTSTRAP_INCLUDE)}",
          "--components=main", SUITE, str(root), mirror], "debootstrap", build / "debootstrap.log")

    say(f"image {digest}: [2/7] apt-get install {len(packages)} packages in the chroot, "
        f"download-only {' '.join(DOWNLOAD_ONLY)} (about 2-5 min)")
    _write(root, "/etc/apt/sources.list", sources_list(mirror, security))
    _write(root, "/etc/apt/apt.conf.d/10hosttune-keep-debs",
           FILES["/etc/apt/apt.conf.d/10hosttune-keep-debs"])
    _write(root, "/usr/sbin/policy-rc.d", "#!/bin/sh\nexit 101\n", mode=0o755)
    script = CHROOT_SCRIPT.format(packages=" ".join(packages),
                                  download_only=" ".join(DOWNLOAD_ONLY))
    _mount(["-t", "proc", "proc", str(root / "proc")])
    try:
        _run(["chroot", str(root), "/bin/sh", "-c", script], "chroot apt-get",
             build / "chroot.log")
    finally:
        _umount(root / "proc")
    (root / "usr/sbin/policy-rc.d").unlink()

    say(f"image {digest}: [3/7] configuring (fstab, network, sshd, GRUB defaults, root key, "
        f"initramfs)")
    for path, content in files.items():
        if content.startswith("@"):
            target = root / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists() or target.is_symlink():
                target.unlink()
            target.symlink_to(content[1:])
        else:
            _write(root, path, content)
    _mount(["-t", "proc", "proc", str(root / "proc")])
    try:
        _run(["chroot", str(root), "update-initramfs", "-u", "-k", "all"], "update-initramfs",
             build / "initramfs.log")
    finally:
        _umount(root / "proc")
    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    _write(root, "/root/.ssh/authorized_keys", pubkey + "\n", mode=0o600)
    (build / "recipe.json").write_text(json.dumps(rec, indent=2, sort_keys=True) + "\n")
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise GuestError(f"no kernel in {root}/boot after the chroot install")
    kernel = kernels[-1]
    initrd = root / "boot" / kernel.name.replace("vmlinuz-", "initrd.img-")
    shutil.copy2(kernel, build / "vmlinuz")
    shutil.copy2(initrd, build / "initrd.img")

    say(f"image {digest}: [4/7] raw disk {DISK_MIB} MiB: sfdisk + mkfs.ext4 -d + dd (no loop)")
    disk = build / "disk.img"
    part = build / "part.img"
    with open(disk, "wb") as fh:
        fh.truncate(DISK_MIB * 1024 * 1024)
    if uefi:  # GPT: the ESP (formatted in the guest), then root; 1 MiB left for the backup GPT
        layout = f"label: gpt\nstart=2048, size={ESP_MIB}MiB, type=U\ntype=L\n"
        part_start, part_mib = 1 + ESP_MIB, DISK_MIB - 2 - ESP_MIB
    else:
        layout = "label: dos\nstart=2048, type=83, bootable\n"
        part_start, part_mib = 1, DISK_MIB - 1
    _run(["sfdisk", "--quiet", str(disk)], "sfdisk", build / "sfdisk.log", input_text=layout)
    _run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(root), str(part), f"{part_mib}M"],
         "mkfs.ext4", build / "mkfs.log")
    _run(["dd", f"if={part}", f"of={disk}", "bs=1M", f"seek={part_start}",
          "conv=notrunc,sparse", "status=none"], "dd", build / "dd.log")
    part.unlink()
    _rmtree(root)

    loader = "systemd-boot" if uefi else "GRUB"
    say(f"image {digest}: [5/7] first boot (direct kernel) to install {loader} in the guest")
    from hosttune_testbed.qemu import NumaNode, Topology
    from hosttune_testbed.vm import Guest

    topo = Topology(sockets=1, cores=2, threads=1, nodes=(NumaNode((0, 1), 1024),),
                    name="image-build")
    guest = Guest(
        name=f"image-build-{digest[:8]}", topology=topo, disk=disk, disk_format="raw",
        kernel=str(build / "vmlinuz"), initrd=str(build / "initrd.img"),
        append=f"root=/dev/vda{2 if uefi else 1} rw {KERNEL_CMDLINE}", accel="tcg",
    )
    try:
        guest.start()
        say(f"image {digest}: [6/7] {loader} install in the guest, power off")
        proc = guest.ssh(rec["first_boot_script"], timeout=900)
        (build / "first-boot.log").write_text(proc.stdout + proc.stderr)
        guest.ssh("systemctl poweroff", check=False, timeout=30)
        deadline = time.monotonic() + 180
        while guest.alive() and time.monotonic() < deadline:
            time.sleep(1)
        if guest.alive():
            say(f"image {digest}: guest did not power off in 180 s; stopping it")
    finally:
        guest.shutdown(timeout=60)
        if guest.console_log.exists():
            shutil.copy2(guest.console_log, build / "first-boot-console.log")

    say(f"image {digest}: [7/7] qemu-img convert to qcow2")
    _run(["qemu-img", "convert", "-O", "qcow2", str(disk), str(build / "disk.qcow2")],
         "qemu-img convert", build / "convert.log")
    disk.unlink()
    for name in ("vmlinuz", "initrd.img"):
        (build / name).unlink()
    os.chmod(build / "disk.qcow2", 0o444)  # the base image is never written


def _write(root: Path, path: str, content: str, mode: int = 0o644) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink():
        target.unlink()
    target.write_text(content)
    os.chmod(target, mode)


def _run(argv: list[str], what: str, log: Path, input_text: str | None = None) -> None:
    t0 = time.monotonic()
    with open(log, "w") as fh:
        proc = subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT, text=True,
                              input=input_text, stdin=None if input_text else subprocess.DEVNULL)
    if proc.returncode:
        text = log.read_text(errors="replace").strip().splitlines()
        raise GuestError(
            f"image build: {what} failed (exit {proc.returncode}); last lines of {log}:\n"
            + "\n".join(text[-25:])
        )
    if time.monotonic() - t0 > 20:
        say(f"  {what} took {time.monotonic() - t0:.0f} s")


def _mount(args: list[str]) -> None:
    proc = subprocess.run(["mount", *args], capture_output=True, text=True)
    if proc.returncode:
        raise GuestError(f"mount {' '.join(args)} failed: {proc.stderr.strip()}")


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    out = []
    for line in Path("/proc/mounts").read_text().splitlines():
        mnt = line.split()[1].replace("\\040", " ")
        if mnt.startswith(prefix):
            out.append(mnt)
    return out


def _rmtree(path: Path) -> None:
    """Remove a build directory, never following a mount still inside it (a chroot's /proc)."""
    if not path.exists():
        return
    for mnt in sorted(_mounts_under(path), reverse=True):
        _umount(Path(mnt))
    if _mounts_under(path):
        raise GuestError(f"refusing to delete {path}: mounts remain under it")
    shutil.rmtree(path, ignore_errors=True)


def _keep_failure_logs(build: Path, digest: str) -> None:
    if not build.exists():
        return
    keep = images_dir() / f"failed-{digest}"
    _rmtree(keep)
    keep.mkdir(parents=True, exist_ok=True)
    for log in build.glob("*.log"):
        shutil.copy2(log, keep / log.name)
    say(f"image {digest}: build failed; its logs are in {keep}")


def _remove_stale_builds(digest: str) -> None:
    """Builds of this digest left by killed processes (we hold the lock: none is running)."""
    for stale in images_dir().glob(f".build-{digest}-*"):
        say(f"removing stale build directory {stale}")
        _rmtree(stale)
    for stale in images_dir().glob(f".old-{digest}-*"):
        _rmtree(stale)


def cached_images() -> list[dict[str, Any]]:
    out = []
    for disk in sorted(images_dir().glob("*/disk.qcow2")):
        st = disk.stat()
        out.append({"path": str(disk), "hash": disk.parent.name, "bytes": st.st_size,
                    "built": time.strftime("%Y-%m-%d %H:%M", time.localtime(st.st_mtime))})
    return out


def prune_images() -> list[str]:
    """Delete cached images other than the current recipe's (and failed-build logs), except
    those a running guest uses as its backing file. Returns the deleted paths."""
    from hosttune_testbed.vm import list_states

    keep = {image_path(recipe(firmware)).parent.name for firmware in FIRMWARES}
    in_use = {Path(s["image"]).parent.name for s in list_states()
              if s.get("running") and s.get("image")}
    removed = []
    with paths.file_lock(images_dir() / ".prune.lock"):
        for entry in sorted(images_dir().iterdir()):
            if not entry.is_dir() or entry.name.startswith((".build-", ".old-")):
                continue
            if entry.name in keep or entry.name in in_use:
                continue
            _rmtree(entry)
            lock = images_dir() / f"{entry.name}.lock"
            if lock.exists():
                lock.unlink()
            removed.append(str(entry))
    return removed
