"""One output contract on every verb: --json before or after the verb; under --json a
failure is a JSON object (error, hint, exit_code) on stdout beside the one line on stderr;
every JSON document carries schema_version; -q keeps stderr quiet; progress shows as
timestamped lines when stderr is not a terminal."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from p2vimage.cli.main import global_first
from tests.conftest import assert_one_line_error, p2v

NOWHERE = "/nonexistent/p2vimage-test"


def failing_calls(tmp: Path) -> dict[str, tuple[list[str], int]]:
    """verb → (a command line that fails on bad input, its documented exit code)."""
    clouds = tmp / "clouds.yaml"
    clouds.write_text("clouds:\n  lab:\n    auth:\n      auth_url: http://127.0.0.1:9/\n")
    return {
        "build": (["build", NOWHERE, "-o", str(tmp / "x.img")], 2),
        "verify": (["verify", NOWHERE, str(tmp / "x.img")], 2),
        "convert": (["convert", NOWHERE], 2),
        "smoke": (["smoke", NOWHERE], 2),
        "sync": (["sync", NOWHERE, str(tmp / "staging")], 2),
        "run": (["run", NOWHERE, "-o", str(tmp / "x.img")], 2),
        "upload": (["upload", NOWHERE, "--name", "x", "--os-cloud", "lab"], 2),
        "volume": (["volume", "--image", "x", "--os-cloud", "nope", "--dry-run"], 2),
        "boot": (["boot", "--volume", "v", "--flavor", "f", "--network", "none",
                  "--os-cloud", "nope", "--dry-run"], 2),
        "write-volume": (["write-volume", NOWHERE, "/dev/null"], 2),
        "cloud cleanup": (["cloud", "cleanup", "--source-host", "h", "--os-cloud", "nope",
                           "--dry-run"], 2),
        "cutover plan": (["cutover", "plan", NOWHERE + ".toml"], 2),
        "cutover status": (["cutover", "status", NOWHERE + ".toml"], 2),
        "doctor": (["doctor", "--verb", "no-such-verb"], 2),
    }


@pytest.mark.parametrize("verb", sorted(failing_calls(Path("/tmp"))))
@pytest.mark.parametrize("where", ["before", "after"])
def test_failures_as_json_on_every_verb(tmp_path: Path, verb: str, where: str) -> None:
    argv, code = failing_calls(tmp_path)[verb]
    args = ["--json", *argv] if where == "before" else [*argv, "--json"]
    proc = p2v(*args, env={**os.environ, "OS_CLIENT_CONFIG_FILE": str(tmp_path / "clouds.yaml")})
    assert_one_line_error(proc, code)
    error = json.loads(proc.stdout)
    assert error["schema_version"] == 1
    assert error["exit_code"] == code
    assert error["error"] and "\n" not in error["error"]
    assert error["hint"]
    assert proc.stderr.splitlines()[-1].startswith(f"error: {error['error'][:20]}")


def test_results_carry_schema_version_before_and_after(tmp_path: Path) -> None:
    for args in (["--json", "doctor", "--verb", "build"], ["doctor", "--verb", "build", "--json"]):
        proc = p2v(*args)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["schema_version"] == 1


def test_global_options_move_before_the_verb_but_not_after_dashdash() -> None:
    assert global_first(["verify", "a", "b", "--json", "-q"]) == ["--json", "-q", "verify",
                                                                   "a", "b"]
    assert global_first(["sync", "x", "y", "--workdir", "w", "-v"]) == [
        "--workdir", "w", "-v", "sync", "x", "y"]
    assert global_first(["build", "--", "--json"]) == ["build", "--", "--json"]


def test_quiet_and_progress_lines(tmp_path: Path) -> None:
    """Off a terminal (as under systemd, AWX or CI), progress comes as timestamped lines;
    -q keeps only warnings and errors."""
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/fstab").write_text("/dev/sda1 / ext3 defaults 0 1\n")
    (tree / "data").write_bytes(os.urandom(8 << 20))
    env = {**os.environ, "P2VIMAGE_PROGRESS_INTERVAL": "0"}
    loud = p2v("build", tree, "-o", tmp_path / "a.img", env=env)
    assert loud.returncode == 0, loud.stderr
    lines = [line for line in loud.stderr.splitlines() if " populate: " in line]
    assert lines and all(line[:4].isdigit() and line[10] == "T" for line in lines), loud.stderr
    assert "100%" in lines[-1]
    quiet = p2v("build", tree, "-o", tmp_path / "b.img", "-q", env=env)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    assert quiet.stdout.startswith("image: ")
    both = p2v("-q", "-v", "doctor", "--verb", "build")
    assert_one_line_error(both, 2, "-q")


def test_openstack_style_formats() -> None:
    from p2vimage.cli.options import formatted

    data = {"image_id": "abc", "name": "ns1", "tags": ["a", "b"], "size": 3, "none": None}
    assert formatted(data, "value", ("id",), "image_id") == "abc"
    assert formatted(data, "value", ("name", "tags", "size"), "image_id") == "ns1\na,b\n3"
    assert json.loads(formatted(data, "json", ("id", "name"), "image_id")) == {
        "schema_version": 1, "id": "abc", "name": "ns1"}
    table = formatted(data, "table", ("id", "name"), "image_id").splitlines()
    assert table[1] == "| Field | Value |" and table[3] == "| id    | abc   |"
    assert len({len(line) for line in table}) == 1


def test_format_options_on_the_cloud_verbs(tmp_path: Path) -> None:
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text("clouds:\n  lab:\n    auth:\n      auth_url: http://127.0.0.1:9/v3\n"
                      "      username: u\n      password: p\n      project_name: x\n")
    env = {**os.environ, "OS_CLIENT_CONFIG_FILE": str(clouds)}
    ok = p2v("volume", "--image", "web1-img", "--os-cloud", "lab", "--dry-run", "-f", "json",
             "-c", "name", "-c", "image_id", env=env)
    assert ok.returncode == 0, ok.stderr
    assert set(json.loads(ok.stdout)) == {"schema_version", "name", "image_id"}
    for verb in (["upload", NOWHERE, "--name", "x"], ["volume", "--image", "x"],
                 ["boot", "--volume", "v", "--flavor", "f", "--network", "none"],
                 ["cloud", "cleanup", "--source-host", "h"]):
        bad = p2v(*verb, "--os-cloud", "lab", "--dry-run", "-f", "value", "-c", "nope",
                  env=env)
        assert_one_line_error(bad, 2, "no column 'nope'")


def test_progress_lines_close_even_when_interrupted_while_made() -> None:
    """tqdm's __del__ calls close(): after a Ctrl-C inside __init__ the attributes are not
    all there (a build interrupted at that moment printed an AttributeError, not one line)."""
    from p2vimage.core.log import _Lines

    _Lines.__new__(_Lines).close()
