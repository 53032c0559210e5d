"""The CLI's contract: usage errors, size parsing, error lines, exit codes."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import pytest

from p2vimage.build import stage as image
from p2vimage.cli import main as cli
from p2vimage.core.errors import InputError, P2VError, PreconditionError, StageError
from p2vimage.core.units import human, parse_size
from tests.conftest import assert_one_line_error, p2v
from tests.treesums import sha256_tree


def test_sizes() -> None:
    assert parse_size("4G") == 4 << 30
    assert parse_size("800M") == 800 << 20
    assert parse_size("1.5GiB") == 3 << 29
    assert parse_size("1048576") == 1 << 20
    for bad in ("", "4X", "-1G", "0"):
        with pytest.raises(InputError):
            parse_size(bad)
    assert (human(1536 << 20), human(20 << 40)) == ("1.5 GiB", "20.0 TiB")


def test_error_line_is_one_line() -> None:
    err = InputError("bad\nthing", hint="fix it")
    assert err.one_line() == "error: bad thing (hint: fix it)"
    assert (P2VError.exit_code, StageError.exit_code, InputError.exit_code,
            PreconditionError.exit_code) == (1, 1, 2, 3)


def test_usage_error_exit_2_one_line() -> None:
    proc = p2v("build")
    assert_one_line_error(proc, 2, "SOURCE")
    proc = p2v("build", "/tmp", "-o", "/tmp/x.img", "--size", "lots")
    assert_one_line_error(proc, 2, "lots")
    proc = p2v("no-such-verb")
    assert_one_line_error(proc, 2, "no-such-verb")


def test_help_and_version() -> None:
    proc = p2v("--help")
    assert proc.returncode == 0
    for verb in ("build", "verify", "doctor"):
        assert verb in proc.stdout
    assert p2v("--version").stdout.startswith("p2vimage, version ")


@pytest.fixture
def in_process() -> Iterator[Callable[[list[str]], int]]:
    """cli.main in this process (to force failures no real input causes); the SIGTERM
    handler and log handlers it installs are put back afterwards."""
    handler = signal.getsignal(signal.SIGTERM)
    logger = logging.getLogger("p2vimage")
    handlers = logger.handlers[:]

    def run(argv: list[str]) -> int:
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        return int(exc.value.code or 0)

    yield run
    signal.signal(signal.SIGTERM, handler)
    logger.handlers[:] = handlers


@pytest.mark.parametrize("debug", [False, True])
def test_unexpected_exception_is_one_line(in_process: Callable[[list[str]], int],
                                          monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                          debug: bool) -> None:
    """Not a P2VError (a bug, an OSError deep down): one line and exit 1; the traceback only
    with --debug (it used to be a traceback always)."""
    def boom(opts: object) -> None:
        raise RuntimeError("deep failure\non two lines")

    monkeypatch.setattr(image, "build", boom)
    code = in_process([*(["--debug"] if debug else []), "build", str(tmp_path), "-o",
                       str(tmp_path / "x.img")])
    err = capsys.readouterr().err
    assert code == 1
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        "error: unexpected RuntimeError: deep failure on two lines (hint: rerun with --debug "
        "for the traceback, and report it)"]
    assert ("Traceback" in err) == debug


def test_debug_keeps_the_exit_code(tmp_path: Path) -> None:
    """--debug adds the traceback; exit 2 stays 2 (it became 1)."""
    proc = p2v("--debug", "build", tmp_path / "nope", "-o", tmp_path / "x.img")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: source ")


@pytest.mark.parametrize("args", [[], ["cutover"], ["cloud"]])
def test_bare_group_prints_its_help(args: list[str]) -> None:
    proc = p2v(*args)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout.startswith(f"Usage: p2vimage {' '.join(args)}".rstrip() + " [OPTIONS]")
    assert "Commands:" in proc.stdout


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in group.commands.items():
        yield (*path, name)
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))


@pytest.mark.parametrize("debug", [False, True])
@pytest.mark.parametrize("path", [(), *_commands(cli.cli)], ids=" ".join)
def test_unknown_option_is_exit_2_everywhere(in_process: Callable[[list[str]], int],
                                             capsys: pytest.CaptureFixture[str],
                                             path: tuple[str, ...], debug: bool) -> None:
    code = in_process([*(["--debug"] if debug else []), *path, "--no-such-option"])
    err = capsys.readouterr().err
    assert code == 2
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        err.strip()], err
    assert "--no-such-option" in err and "(hint: see 'p2vimage" in err


@pytest.mark.parametrize("args,words", [
    (["--probe", "tcp:99999"], ["99999"]),
    (["--probe", "tcp:0"], ["port 0"]),
    (["--probe", "http:80:/:99"], ["status 99"]),
    (["--probe", "http:80:nopath"], ["nopath"]),
    (["--probe", "tcp:22@999.1.1.1"], ["999.1.1.1"]),
    (["--login-regex", "login(:"], ["--login-regex", "login(:"]),
    (["--timeout", "login=0"], ["login=0"]),
    (["--timeout", "kernel=inf"], ["kernel=inf"]),
    (["--timeout", "probes=nan"], ["probes=nan"]),
    (["--timeout", "bootloader=-5"], ["bootloader=-5"]),
    (["--report-dir", "IMAGE/reports"], ["IMAGE", "not a directory"]),
    (["--report-dir", "IMAGE"], ["IMAGE"]),  # click's own check (refused before too)
    (["--report-dir", "BLOCKER/x"], ["BLOCKER", "not a directory"]),
    ([], ["x.img.smoke", "not a directory"]),  # a file where the default report dir goes
])
def test_bad_smoke_options_refused_before_anything_starts(tmp_path: Path, args: list[str],
                                                          words: list[str]) -> None:
    image_path = tmp_path / "x.img"
    image_path.write_bytes(b"\0" * 4096)  # not booted: every row is refused first
    blocker = tmp_path / "blocker"
    blocker.write_text("a file\n")
    if not args:
        tmp_path.joinpath("x.img.smoke").write_text("a file where the reports would go\n")
    subs = {"IMAGE": str(image_path), "BLOCKER": str(blocker)}
    before = sha256_tree(tmp_path)
    proc = p2v("smoke", image_path, *(a.replace("IMAGE", subs["IMAGE"]).replace(
        "BLOCKER", subs["BLOCKER"]) for a in args))
    assert_one_line_error(proc, 2, *(subs.get(w, w) for w in words))
    assert sha256_tree(tmp_path) == before


def test_run_refuses_a_bad_probe_before_building(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/hostname").write_text("legacy\n")
    before = sha256_tree(tmp_path)
    proc = p2v("run", tree, "-o", tmp_path / "x.img", "--probe", "http:80:/:99")
    assert_one_line_error(proc, 2, "status 99")
    assert sha256_tree(tmp_path) == before
