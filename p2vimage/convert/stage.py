"""``convert``: make an image boot as a KVM guest, offline, in one libguestfs launch.

Inspect the guest, let every fixup plan its edits from the guest's own files, then apply
them and run the bootloader actions in the same appliance. An initrd that lacks virtio is
rebuilt with the guest's own tool; as root that runs in a host chroot of the image (18 s
against 510 s inside the TCG appliance), otherwise in the appliance.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import os
import platform
import re
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, assert_never

from p2vimage.convert import fixups
from p2vimage.convert.fixups.base import (
    Action,
    Edit,
    ExtlinuxInstall,
    Grub2Install,
    InitramfsRebuild,
    Inspection,
    Loader,
    Result,
    SetBootable,
    SwapFile,
    Target,
    WriteMbr,
)
from p2vimage.convert.options import (
    BootloaderChoice,
    ConvertOptions,
    InitramfsMethod,
    RootDevice,
)
from p2vimage.core.errors import InputError, PreconditionError, StageError
from p2vimage.core.log import step
from p2vimage.core.plain import plain
from p2vimage.disk import loopmount, mbr
from p2vimage.disk import state as imagestate
from p2vimage.guest import facts as guestfacts
from p2vimage.guest import record as guestrecord
from p2vimage.guest.appliance import Guest, launches
from p2vimage.guest.files import LocalFiles
from p2vimage.guest.record import GuestRecord
from p2vimage.host import accel as accelmod
from p2vimage.host import run as runmod

MBR_BIN = ("/usr/lib/EXTLINUX/mbr.bin", "/usr/lib/syslinux/mbr/mbr.bin",
           "/usr/share/syslinux/mbr.bin", "/usr/lib/syslinux/mbr.bin")
CONSOLE_ARGS = ("console=tty0", "console=ttyS0,115200")
X86 = {"i386", "i486", "i586", "i686", "x86_64", "amd64"}
TOOLS = ("lsinitramfs", "qemu-system-x86_64")


def host_mbr_bin() -> bytes:
    """The host syslinux's MBR boot code."""
    for path in MBR_BIN:
        if os.path.isfile(path):
            return Path(path).read_bytes()
    raise PreconditionError("syslinux mbr.bin not found on this host",
                            hint="install syslinux-common (ci/setup does)")


def _locked(image: Path, write: bool) -> bool:
    """Whether a running qemu holds the image (its locks sit on bytes 100-299)."""
    with open(image, "r+b" if write else "rb") as f:
        try:
            fcntl.lockf(f, (fcntl.LOCK_EX if write else fcntl.LOCK_SH) | fcntl.LOCK_NB, 200, 100)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return True
            raise
        fcntl.lockf(f, fcntl.LOCK_UN, 200, 100)
    return False


def preflight(opts: ConvertOptions) -> None:
    """Refuse what cannot be converted before launching anything."""
    image = opts.image
    if not image.exists():
        raise InputError(f"image {image} does not exist", hint="give the raw image to convert")
    if not image.is_file():
        raise InputError(f"{image} is not a file", hint="give the raw image to convert")
    size = image.stat().st_size
    with open(image, "rb") as f:
        head = f.read(512)
    if head.startswith(b"QFI\xfb"):
        raise InputError(f"{image} is a qcow2 image", hint="convert works on the raw image")
    if size < 1 << 20 or size % 512:
        raise InputError(f"{image} is not a disk image ({size} bytes)",
                         hint="give a raw image made by 'p2vimage build'")
    if not opts.dry_run and (not image.stat().st_mode & stat.S_IWUSR
                             or not os.access(image, os.W_OK)):
        raise InputError(f"image {image} is read-only",
                         hint="make it writable (chmod u+w) or look first with --dry-run")
    if _locked(image, write=not opts.dry_run):
        raise PreconditionError(f"image {image} is in use by another process (a running VM?)",
                                hint="shut that VM down first")


def choose_target(info: Inspection, view: Guest, opts: ConvertOptions,
                  mbr_bin: bytes) -> Target:
    """The bootloader, root device and kernel arguments the converted guest gets."""
    has_grub2 = any(view.is_file(p) for p in ("/usr/sbin/grub-install", "/usr/sbin/grub2-install",
                                              "/sbin/grub-install"))
    settings = opts.settings
    loader: Loader
    match settings.bootloader:
        case BootloaderChoice.AUTO:
            if info.record.bootloader == "grub2" and has_grub2:
                loader = Loader.GRUB2
            elif info.record.bootloader in ("grub-legacy", "extlinux"):
                loader = Loader.EXTLINUX
            else:
                raise InputError(f"no bootloader p2vimage knows found in {opts.image} "
                                 f"(guest bootloader: {info.record.bootloader})",
                                 hint="choose one with --bootloader extlinux")
        case BootloaderChoice.GRUB2:
            if not has_grub2:
                raise InputError(f"the guest in {opts.image} has no grub-install",
                                 hint="use --bootloader extlinux")
            loader = Loader.GRUB2
        case BootloaderChoice.EXTLINUX:
            loader = Loader.EXTLINUX
        case _:
            assert_never(settings.bootloader)
    args = list(CONSOLE_ARGS)
    if info.record.predictable_names and any(re.fullmatch(r"eth\d+", n)
                                             for n in info.record.nics):
        args.append("net.ifnames=0")
    root = f"UUID={info.root_uuid}" if settings.root_device == RootDevice.UUID else "/dev/vda1"
    return Target(root_spec=root, bootloader=loader, kernel_args=tuple(args),
                  swap_file_mib=settings.swap_file_mib,
                  disable_hardware=settings.disable_hardware, mbr_bin=mbr_bin)


def _inspect(guest: Guest, opts: ConvertOptions, listing: Callable[[str], str]) -> Inspection:
    roots = guest.inspect_roots()
    if not roots and not any(t not in ("unknown", "swap", "")
                             for t in guest.filesystems().values()):
        raise InputError(f"{opts.image} is not a disk image (no filesystem found)",
                         hint="give a raw image made by 'p2vimage build'")
    if not roots:
        raise InputError(f"no operating system found in {opts.image}",
                         hint="the image must hold a Linux root filesystem")
    if len(roots) > 1:
        raise InputError(f"more than one operating system in {opts.image}: {', '.join(roots)}",
                         hint="convert images with one root filesystem")
    root = roots[0]
    guest.mount_root(root)
    sector0 = guest.sector0()
    parts = mbr.partitions(sector0)
    info = Inspection(guestrecord.read(guest, listing), guest.uuid(root),
                      guest.fstype(root), sector0[:440], bool(parts) and parts[0].bootable,
                      guest.boot_sector(root))
    if not info.record.kernels:
        raise InputError(f"no kernel in /boot of {opts.image}",
                         hint="install a kernel in the guest (sync /boot too)")
    return info


def _apply_edits(guest: Guest, edits: list[Edit]) -> None:
    for edit in edits:
        if edit.symlink is not None:
            guest.symlink(edit.symlink, edit.path)
        elif edit.new is None:
            guest.remove(edit.path)
        else:
            guest.write(edit.path, edit.new, edit.mode)


def _rebuild_argv(tool: str, version: str) -> list[str]:
    if tool == "update-initramfs":
        return ["update-initramfs", "-u", "-k", version]
    if tool == "dracut":
        return ["dracut", "-f", f"/boot/initramfs-{version}.img", version]
    return ["mkinitrd", "-f", f"/boot/initrd-{version}.img", version]


def _grub2_install(guest: Guest, target: Target) -> None:
    grub = "grub2" if guest.is_file("/usr/sbin/grub2-install") else "grub"
    cfg = "/boot/grub2/grub.cfg" if grub == "grub2" else "/boot/grub/grub.cfg"
    # The appliance's kernel names the image's disk (usually sda; under load it has been sdb):
    # ask the guest's own grub-probe which disk and partition hold /.
    disk = guest.command([f"{grub}-probe", "--target=disk", "/"]).strip()
    device = guest.command([f"{grub}-probe", "--target=device", "/"]).strip()
    guest.command([f"{grub}-install", disk])
    guest.command([f"{grub}-mkconfig", "-o", cfg])
    if not target.root_spec.startswith("UUID="):  # grub-mkconfig wrote the appliance's name
        text = (guest.read_bytes(cfg) or b"").replace(f"root={device} ".encode(),
                                                     f"root={target.root_spec} ".encode())
        guest.write(cfg, text)


def _run_action(guest: Guest, action: Action, target: Target) -> None:
    match action:
        case SwapFile(path, mib):
            guest.swapfile(path, mib)
        case InitramfsRebuild(tool, versions):
            for version in versions:
                guest.command(_rebuild_argv(tool, version))
        case Grub2Install():
            _grub2_install(guest, target)
        case ExtlinuxInstall(directory):
            guest.install_extlinux(directory)
        case WriteMbr():
            guest.write_mbr(target.mbr_bin)
        case SetBootable():
            guest.set_bootable()
        case _:
            assert_never(action)


def _chroot_possible(info: Inspection) -> bool:
    return (loopmount.possible() and platform.machine() == "x86_64"
            and info.record.arch in X86)


def _still_missing(info: Inspection, versions: tuple[str, ...],
                   listing: Callable[[str], str]) -> list[str]:
    """After a rebuild, list the initrds again: the virtio modules they still lack."""
    still: list[str] = []
    missing = info.record.missing_virtio or {}
    for kernel in info.record.kernels:
        if kernel.version in versions and kernel.initrd:
            have = guestfacts.initrd_modules(listing(kernel.initrd))
            still += [f"{kernel.initrd}: {m}" for m in missing.get(kernel.version, ())
                      if m not in have]
    return still


def _rebuild_in_chroot(image: Path, info: Inspection, action: InitramfsRebuild,
                       listings: _Listings) -> tuple[list[str], GuestRecord]:
    """Rebuild in a host chroot of the image, then list the initrds again and read the
    converted guest's record (one mount for all)."""
    with loopmount.mounted(image, pseudo=True) as root:
        for version in action.versions:
            runmod.run(["chroot", str(root), *_rebuild_argv(action.tool, version)],
                       timeout=1800, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"},
                       what=f"{action.tool} in a chroot of {image}")
        listings.forget()
        listing = listings.via(lambda p: guestfacts.list_initrd(root / p.lstrip("/")))
        return (_still_missing(info, action.versions, listing),
                guestrecord.read(LocalFiles(root), listing))


class _Listings:
    """Initrd listings by guest path: each initrd is listed once (downloading it from the
    appliance costs seconds) until a rebuild makes them all stale."""

    def __init__(self) -> None:
        self.known: dict[str, str] = {}

    def via(self, lister: Callable[[str], str]) -> Callable[[str], str]:
        """A listing that lists with ``lister`` what is not known yet."""
        def listing(path: str) -> str:
            if path not in self.known:
                self.known[path] = lister(path)
            return self.known[path]

        return listing

    def forget(self) -> None:
        """After a rebuild: list again."""
        self.known.clear()


def _guest_listing(guest: Guest) -> Callable[[str], str]:
    def listing(path: str) -> str:
        with guest.downloaded(path) as local:
            return guestfacts.list_initrd(local)

    return listing


def convert(opts: ConvertOptions) -> dict[str, Any]:
    """Convert (or with dry_run, plan) ``opts.image``; return the report."""
    preflight(opts)
    runmod.require_tools(TOOLS)
    chosen = accelmod.detect()
    mbr_bin = host_mbr_bin()
    started = time.monotonic()
    timings: dict[str, float] = {}
    launches_before = launches()
    deferred: InitramfsRebuild | None = None
    missing: list[str] = []
    listings = _Listings()
    converted: GuestRecord | None = None  # the converted guest's (extlinux installed, …)
    with step(f"Opening {opts.image} in libguestfs ({chosen.describe()})"), \
            Guest(opts.image, chosen, readonly=opts.dry_run) as guest:
        timings["launch"] = round(time.monotonic() - started, 2)
        with step("Inspecting the guest"):
            info = _inspect(guest, opts, listings.via(_guest_listing(guest)))
            target = choose_target(info, guest, opts, mbr_bin)
        timings["inspect"] = round(time.monotonic() - started - timings["launch"], 2)
        results: list[Result] = [fixup.plan(guest, info, target) for fixup in fixups.ALL]
        edits = [e for r in results for e in r.edits]
        actions = [a for r in results for a in r.actions]
        if not opts.dry_run and (edits or actions):
            guest.mount_root(guest.root_device, writable=True)
            with step(f"Applying {len(edits)} edits"):
                _apply_edits(guest, edits)
            where = opts.settings.initramfs_method
            for action in actions:
                if isinstance(action, InitramfsRebuild) and (
                        where == InitramfsMethod.CHROOT or (
                        where == InitramfsMethod.AUTO and _chroot_possible(info))):
                    deferred = action
                    continue
                with step(action.detail):
                    t0 = time.monotonic()
                    _run_action(guest, action, target)
                    timings[action.name] = round(time.monotonic() - t0, 2)
                if isinstance(action, InitramfsRebuild):
                    listings.forget()
                    missing = _still_missing(info, action.versions,
                                             listings.via(_guest_listing(guest)))
            if deferred is None:  # else read in the chroot's mount, after the rebuild
                with step("Reading the converted guest's record"):
                    converted = guestrecord.read(guest, listings.via(_guest_listing(guest)))
    initramfs_report: dict[str, Any] | None = None
    for action in actions:
        if isinstance(action, InitramfsRebuild) and not opts.dry_run:
            method = InitramfsMethod.CHROOT if deferred else InitramfsMethod.APPLIANCE
            if deferred:
                with step(f"{action.detail} in a host chroot"):
                    t0 = time.monotonic()
                    missing, converted = _rebuild_in_chroot(opts.image, info, action,
                                                            listings)
                    timings[action.name] = round(time.monotonic() - t0, 2)
            if missing:
                raise StageError(f"the rebuilt initrd still lacks {', '.join(missing)}",
                                 hint="check the guest's initramfs configuration")
            initramfs_report = {"method": method.value, "seconds": timings[action.name],
                                "kernels": list(action.versions)}
    timings["total"] = round(time.monotonic() - started, 2)
    if not opts.dry_run:  # what build --refresh re-runs when the fixups' inputs change
        imagestate.update(opts.image, convert=plain(opts.settings),
                          **guestrecord.state_fields(opts.image, converted or info.record))
    return report(opts, info, target, results, timings, launches() - launches_before,
                  chosen, initramfs_report)


def report(opts: ConvertOptions, info: Inspection, target: Target, results: list[Result],
           timings: dict[str, float], launch_count: int, chosen: accelmod.Accel,
           initramfs_report: dict[str, Any] | None) -> dict[str, Any]:
    """The conversion report (also the --json output)."""
    changed = any(r.edits or r.actions for r in results)
    guest = info.record
    return {
        "image": os.fspath(opts.image), "dry_run": opts.dry_run, "changed": changed,
        "accelerator": chosen.describe(), "appliance_launches": launch_count,
        "guest": {"distro": guest.distro, "version": guest.version, "arch": guest.arch,
                  "init": str(guest.init), "bootloader": str(guest.bootloader),
                  "nics": list(guest.nics), "root_uuid": info.root_uuid, "fstype": info.fstype,
                  "kernels": [dataclasses.asdict(k) for k in guest.kernels],
                  "missing_virtio": {k: list(v) for k, v in (guest.missing_virtio or {}).items()
                                     if v}},
        "target": {"bootloader": target.bootloader.value, "root": target.root_spec,
                   "kernel_args": list(target.kernel_args)},
        "fixups": [{"name": r.name, "changed": [e.path for e in r.edits],
                    "actions": [a.detail for a in r.actions], "notes": r.notes,
                    "diff": "".join(e.diff() for e in r.edits)} for r in results],
        "initramfs": initramfs_report, "seconds": timings,
    }


def lines(data: dict[str, Any]) -> list[str]:
    """The human form of the report (with the diffs for a dry run)."""
    guest = data["guest"]
    out = [f"guest: {guest['distro']} {guest['version']} {guest['arch']}, init {guest['init']}, "
           f"bootloader {guest['bootloader']}, kernels "
           f"{', '.join(k['version'] for k in guest['kernels'])}",
           f"target: {data['target']['bootloader']}, root={data['target']['root']}, "
           f"{' '.join(data['target']['kernel_args'])}"]
    for fixup in data["fixups"]:
        what = fixup["changed"] + fixup["actions"]
        out.append(f"{fixup['name']}: {'; '.join(what) if what else 'nothing to change'}")
        out += [f"  {note}" for note in fixup["notes"]]
        if data["dry_run"] and fixup["diff"]:
            out += ["  " + line for line in fixup["diff"].rstrip("\n").splitlines()]
    if data["initramfs"]:
        out.append(f"initramfs rebuilt in the {data['initramfs']['method']} in "
                   f"{data['initramfs']['seconds']} s")
    if not data["changed"]:
        out.append("no changes: the image is already converted")
    elif data["dry_run"]:
        out.append("dry run: nothing was written")
    out.append(f"{data['appliance_launches']} appliance launch, {data['seconds']['total']} s "
               f"({data['accelerator']})")
    return out
