"""Cutover host spec: a valid file loads; unknown keys and hostile values in every strict field
are refused with one line (exit 2 through the CLI); free text is quoted, never run."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from p2vimage.core.errors import InputError
from p2vimage.cutover import plan as planmod
from p2vimage.cutover import spec as specmod
from p2vimage.cutover.steps import Command
from tests.conftest import REPO, assert_one_line_error, p2v

SPEC = """
name = "ns1"
public_ip = "192.0.2.10/24"
[legacy]
maintenance_ip = "198.51.100.10/24"
[legacy.ssh]
host = "ns1.example.org"
[node]
maintenance_ip = "198.51.100.20/24"
bridge = "br2004"
[node.local]
[probe]
expect = "instance"
legacy_expect = "legacy"
[probe.local]
prefix = ["ip", "netns", "exec", "client"]
[hooks]
source = "ssh://root@ns1.example.org/"
staging = "/srv/staging/ns1"
image = "/srv/images/ns1.raw"
volume = []
boot = [["p2vimage", "boot", "ns1"]]
unboot = ["echo stop the instance"]
"""
HOSTILE = ["; rm -rf /", "$(touch /tmp/pwned)", "a\nb", "`touch /tmp/pwned`", "-oProxyCommand=x"]
# (table, key) of every field with a strict format
STRICT = [("", "name"), ("", "public_ip"), ("", "profile"), ("", "persist"),
          ("", "rc_local"), ("legacy", "interface"), ("legacy", "maintenance_ip"),
          ("legacy.ssh", "host"), ("legacy.ssh", "user"), ("node", "interface"),
          ("node", "bridge"), ("node", "arping"), ("node", "maintenance_ip"),
          ("probe", "url")]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ns1.toml"
    path.write_text(text)
    return path


def with_value(table: str, key: str, value: object) -> str:
    """SPEC with TABLE.KEY set to VALUE (a TOML literal via repr of a basic string)."""
    literal = '"' + str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") \
        + '"'
    header = f"[{table}]\n" if table else None
    lines = SPEC.splitlines()
    out, current, placed = [], "", False
    for line in lines:
        if line.startswith("["):
            if current == table and not placed:
                out.append(f"{key} = {literal}")
                placed = True
            current = line.strip("[]")
        if current == table and line.startswith(f"{key} ="):
            line, placed = f"{key} = {literal}", True
        out.append(line)
    if not placed:
        out = [f"{key} = {literal}", *out] if not table else [*out, header or "", f"{key} = "
                                                              f"{literal}"]
    return "\n".join(out) + "\n"


def test_valid_spec_loads(tmp_path: Path) -> None:
    spec = specmod.load(write(tmp_path, SPEC))
    assert spec.address == "192.0.2.10" and spec.profile == "fast"
    assert spec.legacy.access.ssh and spec.legacy.access.ssh.user == "root"
    assert spec.legacy.stop == (Command.of("/etc/init.d/util-vserver", "stop"),)
    assert spec.hooks.final_sync == (Command.of(sys.executable, "-m", "p2vimage", "sync",
                                                "--final", "ssh://root@ns1.example.org/",
                                                "/srv/staging/ns1"),)
    assert spec.hooks.unboot == (Command.sh("echo stop the instance"),)
    assert spec.probe.url == "http://192.0.2.10/"


def test_default_hooks_run_this_p2vimage_not_one_on_path(tmp_path: Path) -> None:
    """The default final sync and refresh run the p2vimage that runs the cutover (its own
    interpreter): they work with no p2vimage on PATH at all."""
    spec = specmod.load(write(tmp_path, SPEC))
    for hook, verb in ((spec.hooks.final_sync, "sync"), (spec.hooks.refresh, "build")):
        (command,) = hook
        assert command.argv[:4] == (sys.executable, "-m", "p2vimage", verb)
        proc = subprocess.run([*command.argv[:4], "--help"], capture_output=True, text=True,
                              check=False, cwd=REPO, env={**os.environ, "PATH": "/nonexistent"})
        assert proc.returncode == 0, proc.stderr
        assert f"Usage: p2vimage {verb}" in proc.stdout


# (table, key, value): values that parse but make no sense for a cutover
SEMANTIC = [
    ("legacy", "maintenance_ip", "192.0.2.10/24"),   # the public IP: it would leave with it
    ("legacy", "maintenance_ip", "192.0.2.10/32"),   # the same address, another prefix
    ("node", "maintenance_ip", "192.0.2.10/24"),     # the public IP
    ("node", "maintenance_ip", "192.0.2.10/16"),
    ("node", "maintenance_ip", "198.51.100.10/24"),  # the legacy host's maintenance address
    ("node", "maintenance_ip", "198.51.100.10/32"),
    ("probe", "expect", ""),                         # grep -F '' matches any answer
    ("probe", "expect", "   "),
    ("probe", "expect", "\t"),
    ("probe", "legacy_expect", ""),
    ("probe", "legacy_expect", " \t "),
    ("probe", "legacy_expect", "instance"),         # the same text as expect
    ("probe", "legacy_expect", "inst"),             # contained in expect: both would pass
    ("probe", "legacy_expect", "legacy instance"),  # contains expect
]


@pytest.mark.parametrize(("table", "key", "value"), SEMANTIC)
def test_meaningless_values_are_refused_at_load(tmp_path: Path, table: str, key: str,
                                                value: str) -> None:
    path = write(tmp_path, with_value(table, key, value))
    before = path.read_bytes()
    with pytest.raises(InputError) as err:
        specmod.load(path)
    assert f"{table}.{key}:" in err.value.message and "\n" not in err.value.one_line()
    for verb in ("plan", "status"):  # (never 'run' here: this host's network is no rig)
        assert_one_line_error(p2v("--workdir", tmp_path / "work", "cutover", verb, path), 2,
                              f"{table}.{key}")
    assert path.read_bytes() == before and not (tmp_path / "work").exists()


def test_unknown_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"node.brigde: unknown key"):
        specmod.load(write(tmp_path, SPEC.replace('bridge = "br2004"',
                                                  'bridge = "br2004"\nbrigde = "x"')))


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize(("table", "key"), STRICT)
def test_hostile_value_in_a_strict_field_is_refused(tmp_path: Path, table: str, key: str,
                                                    value: str) -> None:
    with pytest.raises(InputError) as err:
        specmod.load(write(tmp_path, with_value(table, key, value)))
    assert "\n" not in err.value.one_line()
    assert (f"{table}.{key}" if table else key) in err.value.message


def test_bridge_name_longer_than_15_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"node\.bridge"):
        specmod.load(write(tmp_path, SPEC.replace("br2004", "br" + "0" * 14)))


def test_cli_refuses_hostile_spec_with_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, with_value("node", "bridge", "br0; rm -rf /"))
    for verb in ("plan", "run", "status"):
        assert_one_line_error(p2v("cutover", verb, path), 2, "node.bridge")
    assert_one_line_error(p2v("cutover", "plan", tmp_path / "missing.toml"), 2, "missing.toml")


FREE = ["; rm -rf /", "$(touch {c})", "`touch {c}`", "a\nb", "'\"\\", "--", "-x", "*", "~"]


def test_free_text_is_quoted_through_the_plan(tmp_path: Path) -> None:
    """Commands with hostile words and hostile probe text: every command line of the plan,
    run by sh, keeps the words whole and never runs the payload."""
    canary = tmp_path / "pwned"
    words = [w.format(c=canary) for w in FREE]
    text = SPEC.replace('volume = []', "volume = [" + ", ".join(
        '["printf", "%s|", ' + ", ".join('"' + w.replace("\\", "\\\\").replace('"', '\\"')
                                        .replace("\n", "\\n") + '"' for w in words) + "]"
        for _ in (0,)) + "]")
    spec = specmod.load(write(tmp_path, text))
    stop = planmod.steps(spec)["stop"]
    volume = next(c.command for c in stop.do if c.command.argv[:1] == ("printf",))
    out = subprocess.run(["sh", "-c", volume.line()], capture_output=True, text=True,
                         check=True).stdout
    assert out == "".join(w + "|" for w in words)
    assert shlex.split(volume.line()) == list(volume.argv)
    assert not canary.exists()


def test_probe_text_and_paths_are_quoted(tmp_path: Path) -> None:
    canary = tmp_path / "pwned"
    evil = f"x $(touch {canary}) `touch {canary}` ; '"
    text = SPEC.replace('expect = "instance"', f'expect = "{evil}"')
    spec = specmod.load(write(tmp_path, text))
    cmd = planmod.probe_command(spec, spec.probe.expect)
    assert cmd.shell is not None
    # the probe pipes curl into grep: with curl replaced by printf, the text matches itself
    script = cmd.shell.replace("curl -fsS -m 1 http://192.0.2.10/",
                               f"printf %s {shlex.quote(evil)}")
    assert subprocess.run(["sh", "-c", script], check=False).returncode == 0
    assert not canary.exists()
