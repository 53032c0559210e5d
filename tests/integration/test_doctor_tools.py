"""doctor: required and optional host tools per verb, and its exit code.

A tool is hidden for real: the CLI runs in a private mount namespace where every copy of the
program on the search path (PATH, /usr/sbin, /sbin) has an empty, non-executable file
bind-mounted over it, and syslinux's directories have an empty tmpfs over them. The
accelerator probe reads the host's cache (warm after the first doctor); the "no accelerator"
case puts a qemu that exits 1 first on PATH with the cache redirected to a temp dir.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import P2VIMAGE, REPO, assert_one_line_error, needs_root, p2v

PKG = REPO / "p2vimage"
SEARCH = [*os.environ.get("PATH", os.defpath).split(":"), "/usr/local/sbin", "/usr/sbin",
          "/sbin"]
# Programs the package runs inside a guest's chroot, not on the host.
GUEST_SIDE = {"update-initramfs", "dracut", "mkinitrd"}
PROGRAM = re.compile(r"^[a-z][a-z0-9_.+-]*$")
RUNNERS = {"run", "popen", "require_tools", "Popen", "check_output", "check_call", "call"}


def hidden_doctor(tmp: Path, *args: str, hide: tuple[str, ...] = (),
                  empty_dirs: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """Run ``p2vimage ARGS`` where ``hide`` programs and ``empty_dirs`` do not exist."""
    for name in hide:  # hiding what is not there would prove nothing
        assert shutil.which(name, path=":".join(SEARCH)), f"{name} is not on this host"
    blank = tmp / "blank"
    blank.write_bytes(b"")
    blank.chmod(0o644)
    targets = {os.path.realpath(Path(d) / name) for name in hide for d in SEARCH
               if d and os.path.lexists(Path(d) / name)}
    mounts = [f"mount --bind {shlex.quote(str(blank))} {shlex.quote(t)}" for t in targets]
    mounts += [f"mount -t tmpfs none {shlex.quote(d)}" for d in empty_dirs]
    script = "set -e; " + "".join(f"{m}; " for m in mounts) + 'exec "$@"'
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
            *P2VIMAGE, *args]
    return subprocess.run(argv, capture_output=True, text=True, cwd=REPO, check=False)


def _constants(tree: ast.Module) -> dict[str, list[str]]:
    """Module-level names bound to a string or a tuple/list of strings."""
    out: dict[str, list[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            elts = (node.value.elts if isinstance(node.value, ast.Tuple | ast.List)
                    else [node.value])
            words = [e.value for e in elts if isinstance(e, ast.Constant)]
            if len(words) == len(elts) and all(isinstance(w, str) for w in words):
                out[node.targets[0].id] = words
    return out


def _program(node: ast.AST | None, consts: dict[str, list[str]]) -> str | None:
    """The program of an argv literal: its first word, a string or a module constant."""
    if not isinstance(node, ast.List | ast.Tuple) or not node.elts:
        return None
    head = node.elts[0]
    if isinstance(head, ast.Constant) and isinstance(head.value, str):
        return head.value
    if isinstance(head, ast.Name) and len(consts.get(head.id, [])) == 1:
        return consts[head.id][0]
    return None


def _argvs(tree: ast.Module, consts: dict[str, list[str]]) -> list[tuple[str | None, str]]:
    """(program, why) for every argv-like literal in one module."""
    out: list[tuple[str | None, str]] = [
        (word, name) for name, words in consts.items() if name.endswith("TOOLS")
        for word in words]
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            fname = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if fname not in RUNNERS:
                continue
            for arg in node.args:
                if fname == "require_tools" and isinstance(arg, ast.List | ast.Tuple):
                    out += [(e.value, f"require_tools, line {node.lineno}") for e in arg.elts
                            if isinstance(e, ast.Constant) and isinstance(e.value, str)]
                out.append((_program(arg, consts), f"{fname}(), line {node.lineno}"))
        elif isinstance(node, ast.List | ast.Tuple) and len(node.elts) >= 2:
            second = node.elts[1]
            if isinstance(second, ast.Constant) and str(second.value).startswith("-"):
                out.append((_program(node, consts), f"argv, line {node.lineno}"))
        elif isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id.endswith("argv") for t in node.targets):
            out.append((_program(node.value, consts), f"argv, line {node.lineno}"))
        elif isinstance(node, ast.FunctionDef) and "argv" in node.name:
            out += [(_program(ret.value, consts), f"{node.name}()") for ret in ast.walk(node)
                    if isinstance(ret, ast.Return)]
    return out


def programs_run_by_the_package() -> dict[str, set[str]]:
    """program → where: every argv literal, require_tools list and TOOLS tuple in p2vimage."""
    found: dict[str, set[str]] = {}
    for path in sorted(PKG.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for program, why in _argvs(tree, _constants(tree)):
            if program and PROGRAM.match(program):
                found.setdefault(program, set()).add(f"{path.relative_to(REPO)}: {why}")
    return found


def test_every_program_the_package_runs_is_declared() -> None:
    from p2vimage.build import stage as build
    from p2vimage.convert import stage as convert
    from p2vimage.cutover import runner
    from p2vimage.demo import chroot
    from p2vimage.host import accel, tools
    from p2vimage.smoke import stage as smoke

    declared = {n.name for n in tools.NEEDS if n.kind is tools.Kind.PROGRAM}
    found = programs_run_by_the_package()
    assert {"mke2fs", "dumpe2fs", "lsinitramfs", "ssh-keygen", "losetup", "rsync"} <= set(found)
    undeclared = {p: sorted(w) for p, w in found.items()
                  if p not in declared and p not in GUEST_SIDE}
    assert not undeclared, f"add these to host/tools.py NEEDS: {undeclared}"

    def required(verb: str) -> set[str]:
        return {n.name for n in tools.NEEDS if verb in n.required_by()}

    # each stage's own pre-run check is what doctor requires for its verb
    assert set(build.TOOLS) <= required("build")
    assert set(convert.TOOLS) <= required("convert")
    assert set(smoke.TOOLS) <= required("smoke")
    assert set(runner.TOOLS) <= required("cutover")
    assert set(chroot.HOST_TOOLS) <= required("demo")
    assert accel.QEMU in required("convert") & required("smoke")
    assert tools.MBR_BIN == convert.MBR_BIN
    for need in tools.NEEDS:
        assert set(need.required) | set(need.optional) <= set(tools.VERBS), need.name
        assert need.required or need.optional, need.name
        assert need.debian or need.kind is tools.Kind.CAPABILITY, need.name
        assert "ci/setup" not in need.install(), need.name


@needs_root
@pytest.mark.parametrize(("tool", "package", "verb"), [
    ("lsinitramfs", "initramfs-tools-core", "convert"),
    ("dumpe2fs", "e2fsprogs", "upload"),
    ("ip", "iproute2", "cutover"),
])
def test_a_missing_required_tool_exits_3_naming_its_package(
        tmp_path: Path, tool: str, package: str, verb: str) -> None:
    proc = hidden_doctor(tmp_path, "doctor", hide=(tool,))
    assert_one_line_error(proc, 3, tool, package, verb)
    assert "ci/setup" not in proc.stdout + proc.stderr
    assert re.search(rf"^{verb} +CANNOT RUN: missing {tool}$", proc.stdout, re.M), proc.stdout
    assert re.search(rf"^  {tool}: apt-get install {package}", proc.stdout, re.M), proc.stdout

    proc = hidden_doctor(tmp_path, "--json", "doctor", hide=(tool,))
    assert proc.returncode == 3, proc.stderr
    report = json.loads(proc.stdout)
    report = report.get("report", report)  # a failure: the error document carries it
    assert report["missing"] == [tool]
    assert not report["verbs"][verb]["ok"]
    assert report["verbs"]["verify"]["ok"]
    (req,) = [r for r in report["requirements"] if r["name"] == tool]
    assert (req["found"], req["needed"], req["packages"]["debian"]) == (False, "required",
                                                                        package)


@needs_root
def test_missing_test_and_bench_tools_are_optional(tmp_path: Path) -> None:
    hide = ("debootstrap", "virt-make-fs", "arping", "e2fsck")
    proc = hidden_doctor(tmp_path, "--json", "doctor", hide=hide)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    report = report.get("report", report)  # a failure: the error document carries it
    assert report["missing"] == []
    assert set(report["optional_missing"]) == set(hide)
    assert report["verbs"]["cutover"]["ok"]
    assert "neighbours" in report["verbs"]["cutover"]["degraded"]["arping"]
    assert not report["verbs"]["demo"]["ok"] and not report["verbs"]["demo"]["counted"]

    human = hidden_doctor(tmp_path, "doctor", hide=hide)
    assert human.returncode == 0, human.stderr
    optional = human.stdout.split("missing, optional:")[1]
    assert "debootstrap: apt-get install debootstrap" in optional
    assert "virt-make-fs: apt-get install libguestfs-tools" in optional
    assert "arping: apt-get install iputils-arping" in optional
    assert "missing, required" not in human.stdout

    # asked for by name, they count
    demo = hidden_doctor(tmp_path, "doctor", "--verb", "demo", hide=hide)
    assert_one_line_error(demo, 3, "demo", "debootstrap", "apt-get install debootstrap")
    bench = hidden_doctor(tmp_path, "doctor", "--verb", "bench", hide=hide)
    assert_one_line_error(bench, 3, "bench", "virt-make-fs", "libguestfs-tools")


@needs_root
def test_missing_syslinux_mbr_bin_fails_convert(tmp_path: Path) -> None:
    # every place convert looks (tools.MBR_BIN, checked equal to convert's list above)
    dirs = tuple(d for d in ("/usr/lib/EXTLINUX", "/usr/lib/syslinux", "/usr/share/syslinux")
                 if Path(d).is_dir())
    assert any(Path(d, "mbr.bin").is_file() or Path(d, "mbr/mbr.bin").is_file()
               for d in dirs), "no mbr.bin on this host"
    proc = hidden_doctor(tmp_path, "doctor", "--verb", "convert", empty_dirs=dirs)
    assert_one_line_error(proc, 3, "convert", "mbr.bin", "syslinux-common")
    assert re.search(r"^  mbr.bin \(not in /usr/lib/EXTLINUX/mbr.bin, ", proc.stdout,
                     re.M), proc.stdout
    assert "build " not in proc.stdout  # only the verb asked for is listed


def test_no_working_accelerator_exits_3(tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    qemu = fake / "qemu-system-x86_64"
    qemu.write_text("#!/bin/sh\necho 'qemu: cannot start' >&2\nexit 1\n")
    qemu.chmod(0o755)
    cache = tmp_path / "cache"
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "P2VIMAGE_CACHE": str(cache)}
    proc = p2v("--json", "doctor", env=env)
    assert_one_line_error(proc, 3, "convert", "smoke", "accelerator",
                          "qemu cannot boot a probe kernel with any accelerator")
    report = json.loads(proc.stdout)
    report = report.get("report", report)  # a failure: the error document carries it
    assert "error" in report["accelerator"]
    assert "accelerator" in report["missing"]
    assert not report["verbs"]["convert"]["ok"] and not report["verbs"]["smoke"]["ok"]
    assert report["verbs"]["build"]["ok"] and report["verbs"]["upload"]["ok"]
    assert not (cache / "accel").exists() or not list((cache / "accel").iterdir())
    # verbs that boot nothing do not need the accelerator: no probe, exit 0
    proc = p2v("doctor", "--verb", "build", "--verb", "upload", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "accelerator" not in proc.stdout


def test_qemu_img_without_zstd_fails_upload(tmp_path: Path) -> None:
    real = shutil.which("qemu-img")
    assert real, "qemu-img is not on this host"
    fake = tmp_path / "bin"
    fake.mkdir()
    wrapper = fake / "qemu-img"  # a qemu-img as built without zstd (QEMU < 5.1 or --disable-zstd)
    wrapper.write_text("#!/bin/sh\ncase \" $* \" in *compression_type=zstd*)\n"
                       "  echo \"qemu-img: Parameter 'compression-type' does not accept value "
                       "'zstd'\" >&2; exit 1;;\nesac\n"
                       f"exec {real} \"$@\"\n")
    wrapper.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}
    proc = p2v("doctor", "--verb", "upload", env=env)
    assert_one_line_error(proc, 3, "upload", "qemu-img zstd", "--compression zlib")
    assert "does not accept value 'zstd'" in proc.stderr
    assert p2v("doctor", "--verb", "upload").returncode == 0
