"""Shell completion through click's protocol, run against the real CLI in a child process:
``--os-cloud`` completes with the names in clouds.yaml, verbs complete, and the script the
wheel installs is the one ``_P2VIMAGE_COMPLETE=bash_source p2vimage`` prints."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.conftest import p2v

CLOUDS = """\
clouds:
  alpha:
    auth: {auth_url: "http://192.0.2.1:5000/v3", username: u, password: p}
  beta-2:
    region_name: RegionTwo
  beta-3: {}
"""


def complete(words: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """What bash's completion function gets for the command line ``words`` (the cursor at
    its end): click's bash_complete protocol, one ``type,value`` line per candidate."""
    parts = words.split(" ")
    child = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    child.update(HOME=str(tmp_path), _P2VIMAGE_COMPLETE="bash_complete", COMP_WORDS=words,
                 COMP_CWORD=str(len(parts) - 1), **env)
    return p2v(env=child)


def candidates(proc: subprocess.CompletedProcess[str]) -> list[str]:
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stdout.splitlines() if line]


def test_os_cloud_completes_from_clouds_yaml(tmp_path: Path) -> None:
    clouds = tmp_path / "elsewhere.yaml"
    clouds.write_text(CLOUDS)
    for words, expected in [
        ("p2vimage upload --os-cloud ", ["alpha", "beta-2", "beta-3"]),
        ("p2vimage volume --os-cloud b", ["beta-2", "beta-3"]),
        ("p2vimage boot --os-cloud al", ["alpha"]),
        ("p2vimage cloud cleanup --os-cloud beta-2", ["beta-2"]),
        ("p2vimage upload --os-cloud z", []),
    ]:
        proc = complete(words, tmp_path, OS_CLIENT_CONFIG_FILE=str(clouds))
        assert candidates(proc) == [f"plain,{name}" for name in expected], words
        assert proc.stderr == ""


def test_os_cloud_completion_is_quiet_on_a_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "clouds.yaml"
    broken.write_text("clouds: [\n  alpha:\n")
    proc = complete("p2vimage upload --os-cloud ", tmp_path,
                    OS_CLIENT_CONFIG_FILE=str(broken))
    assert candidates(proc) == [] and proc.stderr == ""


def test_verbs_and_options_complete(tmp_path: Path) -> None:
    assert candidates(complete("p2vimage cu", tmp_path)) == ["plain,cutover"]
    assert candidates(complete("p2vimage cutover r", tmp_path)) == [
        "plain,render", "plain,rollback", "plain,run"]
    assert candidates(complete("p2vimage upload --dis", tmp_path)) == ["plain,--disk-format"]


def test_installed_script_is_what_bash_source_prints(tmp_path: Path) -> None:
    from p2vimage.cli.completion import script
    from p2vimage.cli.main import cli

    env = {k: v for k, v in os.environ.items() if k != "_P2VIMAGE_COMPLETE"}
    for shell in ("bash", "zsh", "fish"):
        proc = p2v(env={**env, "_P2VIMAGE_COMPLETE": f"{shell}_source"})
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == script(cli, shell).strip()
        assert f"_P2VIMAGE_COMPLETE={shell}_complete" in proc.stdout
