"""The example recipes' plumbing that needs no debootstrap: mirror choice and cache keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2vimage.demo import chroot, examples
from p2vimage.demo.recipes import RECIPES


def _bootstrap_argv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                    mirror: str | None) -> list[str]:
    seen: list[list[str]] = []
    monkeypatch.setattr(chroot, "run", lambda ctx, argv, **kw: seen.append(list(argv)))
    ctx = chroot.Context("bullseye-i386", RECIPES["bullseye-i386"], tmp_path, tmp_path / "debs",
                         mirror)
    chroot.bootstrap(ctx)
    assert len(seen) == 1 and seen[0][0] == "debootstrap"
    return seen[0]


def test_debootstrap_uses_its_own_default_mirror(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    argv = _bootstrap_argv(monkeypatch, tmp_path, None)
    assert argv[-2:] == ["bullseye", str(tmp_path / "root")]  # no mirror argument
    assert not any("://" in a for a in argv)


def test_mirror_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    argv = _bootstrap_argv(monkeypatch, tmp_path, "http://mirror.invalid/debian")
    assert argv[-1] == "http://mirror.invalid/debian"


def test_key_follows_the_recipe_files_and_the_name() -> None:
    key = examples.fixture_key("bullseye-i386")
    assert len(key) == 12 and key == examples.fixture_key("bullseye-i386")
    assert key != examples.fixture_key("bookworm-amd64")
