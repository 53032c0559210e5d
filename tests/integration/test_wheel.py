"""The wheel as someone who does not develop p2vimage installs it (README's "Install"): built
with the pip of a fresh venv of Debian's /usr/bin/python3 from the checkout's files, installed
with constraints.txt into that venv (outside the repository, --system-site-packages for the
guestfs bindings), then used from an empty directory, so nothing comes from the checkout."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
import zipfile
from pathlib import Path

import click
import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from p2vimage.cli.main import cli
from tests.conftest import REPO

pytestmark = [pytest.mark.slow]


def copy_checkout(dst: Path) -> None:
    """The files git would commit (tracked, or new and not ignored): no build/, no .venv."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                            "--exclude-standard"], cwd=REPO, capture_output=True,
                           check=True).stdout.split(b"\0")
    for rel in filter(None, names):
        src = REPO / os.fsdecode(rel)
        if src.is_file():
            out = dst / os.fsdecode(rel)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(src.read_bytes())
            out.chmod(src.stat().st_mode)


def verbs() -> list[str]:
    """Every command path a user is shown (``build``, ``cutover run``…; not hidden helpers)."""
    out = []
    for name, cmd in cli.commands.items():
        if cmd.hidden:
            continue
        out.append(name)
        if isinstance(cmd, click.Group):
            out += [f"{name} {sub}" for sub, c in cmd.commands.items() if not c.hidden]
    return out


def test_wheel_installs_into_a_fresh_venv_and_runs(tmp_path: Path) -> None:
    src, venv, dist, elsewhere = (tmp_path / d for d in ("src", "venv", "dist", "elsewhere"))
    copy_checkout(src)
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME") and not k.startswith("OS_")}
    env.update(PATH=f"{venv}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               HOME=str(tmp_path))
    env.setdefault("PIP_CACHE_DIR", str(Path.home() / ".cache/pip"))  # reuse the wheels

    def run(*argv: str | Path, **kw: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(a) for a in argv], cwd=elsewhere, capture_output=True,
                              text=True, env={**env, **kw}, check=False)
        assert proc.returncode == 0, (argv, proc.stdout[-2000:], proc.stderr[-3000:])
        return proc

    run("/usr/bin/python3", "-m", "venv", "--system-site-packages", venv)
    run(venv / "bin/python", "-m", "pip", "wheel", "--no-deps", "-w", dist, src)
    version = re.search(r'__version__ = "(.+)"', (src / "p2vimage/__init__.py").read_text())
    assert version
    wheel = dist / f"p2vimage-{version.group(1)}-py3-none-any.whl"
    assert [p.name for p in dist.iterdir()] == [wheel.name]
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        metadata = zf.read(f"p2vimage-{version.group(1)}.dist-info/METADATA").decode()
    assert f"p2vimage-{version.group(1)}.dist-info/licenses/LICENSE" in names
    assert "License-Expression: Apache-2.0" in metadata
    run(venv / "bin/python", "-m", "pip", "install", "-c", src / "constraints.txt", wheel)

    # The commands, from the venv, with nothing of the checkout importable.
    assert run("p2vimage", "--version").stdout.strip() == f"p2vimage, version {version[1]}"
    helptext = run("p2vimage", "--help").stdout
    for name in cli.commands:
        assert re.search(rf"^  {re.escape(name)}\b", helptext, re.M), name
    assert "--refresh" in run("p2vimage", "doctor", "--help").stdout
    where = run(venv / "bin/python", "-c", "import guestfs, p2vimage, importlib.metadata as m;"
                " print(p2vimage.__file__); print(m.version('p2vimage'))").stdout.split()
    assert where[0].startswith(f"{venv}/lib/") and where[1] == version[1]

    # Every dependency at the version constraints.txt pins.
    pins = dict(line.split("===") for line in (src / "constraints.txt").read_text().split("\n")
                if "===" in line and not line.startswith("#"))
    installed = run(venv / "bin/python", "-c", "import importlib.metadata as m, sys; "
                    "[print(n, m.version(n)) for n in sys.argv[1:]]", *pins).stdout
    assert dict(line.split() for line in installed.splitlines()) == pins

    # Man pages: one per command, found by man through PATH, the main one naming every verb.
    man1 = venv / "share/man/man1"
    for verb in verbs():
        assert (man1 / f"p2vimage-{verb.replace(' ', '-')}.1").is_file(), verb
        assert f"\\fBp2vimage {verb.replace('-', chr(92) + '-')}\\fR" in (
            man1 / "p2vimage.1").read_text(), verb
    assert run("man", "-w", "p2vimage").stdout.strip() == str(man1 / "p2vimage.1")
    assert "cutover run" in run("man", "p2vimage-cutover-run", MANPAGER="cat",
                                MANWIDTH="80").stdout

    # Completion: the installed bash script, sourced, completes through the installed command.
    share = venv / "share"
    for path in ("bash-completion/completions/p2vimage", "zsh/site-functions/_p2vimage",
                 "fish/vendor_completions.d/p2vimage.fish"):
        assert "_P2VIMAGE_COMPLETE" in (share / path).read_text(), path
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text("clouds:\n  east: {}\n  west: {}\n")
    script = share / "bash-completion/completions/p2vimage"
    bash = ('source "$1"; COMP_WORDS=("${@:3}"); COMP_CWORD=$(( $# - 3 )); '
            'COMPREPLY=(); _p2vimage_completion "$2"; printf "%s\\n" "${COMPREPLY[@]}"')
    for words, expected in [(["p2vimage", "cu"], ["cutover"]),
                            (["p2vimage", "upload", "--os-cloud", ""], ["east", "west"])]:
        proc = run("bash", "-c", bash, "bash", script, "p2vimage", *words,
                   OS_CLIENT_CONFIG_FILE=str(clouds))
        assert proc.stdout.split() == expected, words


def test_wheel_builds_with_the_oldest_setuptools_declared(tmp_path: Path) -> None:
    """build-system.requires says which setuptools reads pyproject.toml (the SPDX license
    string, license-files): the oldest release series it allows builds the wheel."""
    src, venv, dist = tmp_path / "src", tmp_path / "venv", tmp_path / "dist"
    copy_checkout(src)
    requires = [Requirement(r) for r in
                tomllib.loads((src / "pyproject.toml").read_text())["build-system"]["requires"]]
    setuptools = next(r for r in requires if r.name == "setuptools")
    floor = min(Version(s.version) for s in setuptools.specifier if ">" in s.operator)
    oldest = f"setuptools{setuptools.specifier},=={floor.major}.*"
    others = [str(r) for r in requires if r.name != "setuptools"]
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "-q", oldest, *others],
                   check=True, capture_output=True)
    proc = subprocess.run([str(venv / "bin/python"), "-m", "pip", "wheel", "--no-deps",
                           "--no-build-isolation", "-w", str(dist), str(src)],
                          capture_output=True, text=True, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = dist.iterdir()
    with zipfile.ZipFile(wheel) as zf:
        assert any(n.endswith("/share/man/man1/p2vimage.1") for n in zf.namelist())
