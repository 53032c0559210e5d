"""The CLI's contract: usage errors, size parsing, error lines, exit codes."""

from __future__ import annotations

import pytest

from p2vimage.core.errors import InputError, P2VError, PreconditionError, StageError
from p2vimage.core.units import parse_size
from tests.conftest import assert_one_line_error, p2v


def test_sizes() -> None:
    assert parse_size("4G") == 4 << 30
    assert parse_size("800M") == 800 << 20
    assert parse_size("1.5GiB") == 3 << 29
    assert parse_size("1048576") == 1 << 20
    for bad in ("", "4X", "-1G", "0"):
        with pytest.raises(InputError):
            parse_size(bad)


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
