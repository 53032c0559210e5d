"""The package as others install it: every import declared, one version, a license that the
declared setuptools can read, constraints for every dependency, and README's install steps
matching ci/setup."""

from __future__ import annotations

import ast
import re
import shlex
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import REPO, p2v

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# Imports that no pip package provides: Debian package, and why.
SYSTEM = {"guestfs": "python3-guestfs"}


def third_party_imports() -> dict[str, Path]:
    """Top-level names p2vimage imports (anywhere, lazily too) that are not its own and not
    in the standard library → one file importing it."""
    found: dict[str, Path] = {}
    for path in sorted((REPO / "p2vimage").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.partition(".")[0]
                if top not in sys.stdlib_module_names and top not in ("p2vimage", "__future__"):
                    found.setdefault(top, path)
    return found


def dependencies() -> dict[str, Requirement]:
    return {canonicalize_name(r.name): r
            for r in map(Requirement, PYPROJECT["project"]["dependencies"])}


def setup_packages(array: str) -> list[str]:
    """A bash array of ci/setup (``name=( … )``), comments dropped."""
    text = (REPO / "ci/setup").read_text()
    match = re.search(rf"^{array}=\((.*?)\)", text, re.S | re.M)
    assert match, f"no {array}=( … ) in ci/setup"
    return shlex.split(match.group(1), comments=True)


def readme_section(title: str) -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, re.S | re.M)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def test_every_imported_package_is_declared() -> None:
    owners = packages_distributions()
    declared = dependencies()
    for name, where in third_party_imports().items():
        if name in SYSTEM:
            assert SYSTEM[name] in setup_packages("packages"), name
            assert SYSTEM[name] in readme_section("Install"), name
            continue
        dists = {canonicalize_name(d) for d in owners.get(name, [])}
        assert dists, f"{name} (imported in {where}) is not installed at all"
        assert dists & declared.keys(), (f"{name} (imported in {where.relative_to(REPO)}) "
                                         f"comes from {sorted(dists)}: not in dependencies")


def test_one_version() -> None:
    import p2vimage

    assert "version" not in PYPROJECT["project"]
    assert "version" in PYPROJECT["project"]["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "p2vimage.__version__"}
    proc = p2v("--version", check=True)
    assert proc.stdout.strip() == f"p2vimage, version {p2vimage.__version__}"


def test_license_and_a_setuptools_that_reads_it() -> None:
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    # An SPDX string in `license` and `license-files` need setuptools 77 (PEP 639).
    setuptools = next(r for r in map(Requirement, PYPROJECT["build-system"]["requires"])
                      if r.name == "setuptools")
    assert not any(setuptools.specifier.contains(Version(v)) for v in ("68", "76.1"))
    assert setuptools.specifier.contains(Version("77"))


def test_constraints_pin_every_dependency() -> None:
    pins: dict[str, Version] = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.partition("#")[0].strip()
        if line:
            name, _, version = line.partition("===")
            assert version, f"not an exact pin: {line}"
            pins[canonicalize_name(name)] = Version(version)
    for name, req in dependencies().items():
        assert name in pins, f"{name} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name]), (name, str(req.specifier), pins[name])
    assert "-c constraints.txt" in (REPO / "ci/setup").read_text()


def test_readme_install_matches_ci_setup() -> None:
    section = readme_section("Install")
    command = re.search(r"apt-get install ((?:[^\n]*\\\n)*[^\n]*)", section)
    assert command, "no apt-get install in README's Install section"
    listed = [w for w in shlex.split(command.group(1).replace("\\\n", " "))
              if not w.startswith("-")]
    assert sorted(listed) == sorted(setup_packages("packages"))
    assert not set(listed) & set(setup_packages("test_packages"))
    for needed in ("/usr/bin/python3 -m venv --system-site-packages", "-c constraints.txt",
                   "_P2VIMAGE_COMPLETE=bash_source", "man p2vimage"):
        assert needed in section, needed
