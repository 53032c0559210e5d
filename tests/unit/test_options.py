"""Options said once: every stage option of build, convert and smoke is also an option of run
(same names, same help), both give the stage the same typed settings, closed vocabularies are
enums whose values are the CLI's words, and the pipeline's stamps digest plain JSON."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from p2vimage import pipeline
from p2vimage.build import stage as buildmod
from p2vimage.build.refresh import RefreshMethod
from p2vimage.cli.main import cli
from p2vimage.convert import stage as convertmod
from p2vimage.convert.options import (
    BootloaderChoice,
    ConvertSettings,
    InitramfsMethod,
    RootDevice,
)
from p2vimage.core.plain import plain
from p2vimage.cutover.spec import Profile
from p2vimage.smoke import stage as smokemod
from p2vimage.smoke.options import Probe, ProbeKind, SmokeSettings

# Options of a single verb that run does not take, and why.
VERB_ONLY = {
    "build": {"--refresh", "--refresh-method", "--full-scan",
              "--allow-other-source"},  # updates an existing image
    "convert": {"--dry-run"},  # a dry run changes nothing: the pipeline could not go on
    "smoke": {"--report-dir"},  # run keeps the smoke reports in its work directory
}


def options(verb: str) -> dict[str, click.Option]:
    command = cli.commands[verb]
    return {max(p.opts, key=len): p for p in command.params if isinstance(p, click.Option)}


def described(option: click.Option) -> tuple[Any, ...]:
    return (option.opts, option.secondary_opts, option.help, option.type.name,
            getattr(option.type, "choices", None), option.default, option.multiple,
            option.is_flag, option.show_default, option.required)


@pytest.mark.parametrize("verb", sorted(VERB_ONLY))
def test_run_has_every_stage_option_with_the_same_help(verb: str) -> None:
    run = options("run")
    mine = options(verb)
    assert VERB_ONLY[verb] <= set(mine), "a verb-only option is gone: update VERB_ONLY"
    assert not VERB_ONLY[verb] & set(run), "run takes it now: drop it from VERB_ONLY"
    shared = {name: option for name, option in mine.items() if name not in VERB_ONLY[verb]}
    assert shared, verb
    missing = sorted(set(shared) - set(run))
    assert not missing, f"run lacks {verb}'s {missing}"
    for name, option in shared.items():
        assert option.help, f"{verb} {name} has no help"
        assert described(run[name]) == described(option), name


class Captured(Exception):
    """Stops a verb where it hands its options to the stage."""


BUILD_ARGS = ["--size", "2G", "--fs", "ext3", "--fs-features", "^metadata_csum"]
CONVERT_ARGS = ["--bootloader", "grub2", "--root-device", "vda1", "--swap-file", "512M",
                "--disable-hardware-services", "--initramfs-method", "appliance"]
SMOKE_ARGS = ["--probe", "http:80:/:200:OK", "--no-default-probe", "--login-regex", "ok$",
              "--timeout", "login=30", "--timeout", "probes=5"]
BUILD = buildmod.BuildSettings(size=2 << 30, fstype="ext3", fs_features="^metadata_csum")
CONVERT = ConvertSettings(bootloader=BootloaderChoice.GRUB2, root_device=RootDevice.VDA1,
                          swap_file_mib=512, disable_hardware=True,
                          initramfs_method=InitramfsMethod.APPLIANCE)
SMOKE = SmokeSettings(probes=(Probe(ProbeKind.HTTP, 80, "OK"),), default_probe=False,
                      login_regex="ok$", login_timeout=30.0, probe_timeout=5.0)


def invoke(monkeypatch: pytest.MonkeyPatch, module: Any, name: str, args: list[str]) -> Any:
    """Run the CLI with ``module.name`` replaced; return what the verb handed to it."""
    seen: list[Any] = []

    def stage(opts: Any) -> Any:
        seen.append(opts)
        raise Captured

    monkeypatch.setattr(module, name, stage)
    result = CliRunner().invoke(cli, args)
    assert isinstance(result.exception, Captured), (result.output, result.exception)
    return seen[0]


def test_the_verbs_and_run_give_the_stages_the_same_settings(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    image = str(tmp_path / "x.raw")
    built = invoke(monkeypatch, buildmod, "build", ["build", "/tree", "-o", image, *BUILD_ARGS])
    converted = invoke(monkeypatch, convertmod, "convert", ["convert", image, *CONVERT_ARGS])
    smoked = invoke(monkeypatch, smokemod, "smoke", ["smoke", image, *SMOKE_ARGS])
    ran = invoke(monkeypatch, pipeline, "run",
                 ["run", "/tree", "-o", image, *BUILD_ARGS, *CONVERT_ARGS, *SMOKE_ARGS])
    assert (built.settings, converted.settings, smoked.settings) == (BUILD, CONVERT, SMOKE)
    assert (ran.build, ran.convert, ran.smoke) == (BUILD, CONVERT, SMOKE)
    for settings in (converted.settings, ran.convert):  # enums, not words
        assert (type(settings.bootloader), type(settings.root_device),
                type(settings.initramfs_method)) == (BootloaderChoice, RootDevice,
                                                     InitramfsMethod)
    assert [type(p.kind) for p in ran.smoke.probes] == [ProbeKind]
    default = invoke(monkeypatch, pipeline, "run", ["run", "/tree", "-o", image])
    assert (default.build, default.convert, default.smoke) == (
        buildmod.BuildSettings(), ConvertSettings(), SmokeSettings())


def test_bad_timeout_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(smokemod, "smoke", lambda opts: pytest.fail("smoke ran"))
    monkeypatch.setattr(pipeline, "run", lambda opts: pytest.fail("run ran"))
    for verb in (["smoke", "x.raw"], ["run", "/tree", "-o", "x.raw"]):
        result = CliRunner().invoke(cli, [*verb, "--timeout", "boot=5"])
        assert result.exit_code == 2 and "bootloader|kernel|login|probes" in result.output


@pytest.mark.parametrize(("verb", "option", "values"), [
    ("convert", "--bootloader", BootloaderChoice),
    ("convert", "--root-device", RootDevice),
    ("convert", "--initramfs-method", InitramfsMethod),
    ("build", "--refresh-method", RefreshMethod),
])
def test_choices_are_the_enum_values(verb: str, option: str, values: Any) -> None:
    choices = getattr(options(verb)[option].type, "choices", ())
    assert list(choices) == [member.value for member in values]
    assert [m.value for m in values] == {
        "--bootloader": ["auto", "extlinux", "grub2"], "--root-device": ["uuid", "vda1"],
        "--initramfs-method": ["auto", "chroot", "appliance"],
        "--refresh-method": ["auto", "loop", "rebuild"]}[option]


def test_cutover_profile_choices() -> None:
    plan = cli.commands["cutover"]
    assert isinstance(plan, click.Group)
    profile = next(p for p in plan.commands["plan"].params if p.name == "profile")
    assert list(getattr(profile.type, "choices", ())) == ["fast", "seed"] == list(Profile)
    assert [k.value for k in ProbeKind] == ["tcp", "http", "ssh"]


def test_stamps_digest_plain_json() -> None:
    opts = pipeline.RunOptions(
        source=Path("/srv/ns1"), image=Path("/img/ns1.raw"), build=BUILD, convert=CONVERT,
        smoke=SMOKE)
    options = pipeline.stage_options(opts)
    text = json.dumps(options, sort_keys=True)  # no default=: anything not JSON would raise
    assert json.loads(text) == options
    assert options["build"] == {"source": "/srv/ns1", "settings": {
        "size": 2 << 30, "fstype": "ext3", "fs_features": "^metadata_csum"}}
    assert options["convert"] == {"bootloader": "grub2", "root_device": "vda1",
                                  "swap_file_mib": 512, "disable_hardware": True,
                                  "initramfs_method": "appliance"}
    assert type(options["convert"]["bootloader"]) is str
    probe = options["smoke"]["probes"][0]
    assert probe["kind"] == "http" and type(probe["kind"]) is str
    assert options["smoke"]["login_timeout"] == 30.0
    # the same settings give the same digest input; another setting another one
    again = pipeline.stage_options(dataclasses.replace(opts, convert=dataclasses.replace(
        CONVERT)))
    assert json.dumps(again, sort_keys=True) == text
    other = pipeline.stage_options(dataclasses.replace(opts, convert=dataclasses.replace(
        CONVERT, root_device=RootDevice.UUID)))
    assert other["convert"] != options["convert"] and other["build"] == options["build"]


def test_convert_settings_round_trip_through_the_image_state() -> None:
    assert ConvertSettings.from_record(plain(CONVERT)) == CONVERT
    assert ConvertSettings.from_record({}) == ConvertSettings()
    recorded = {"bootloader": "extlinux", "root_device": "uuid", "swap_file_mib": 0,
                "disable_hardware": False, "initramfs_method": "auto"}  # as state files hold
    settings = ConvertSettings.from_record(recorded)
    assert settings.bootloader is BootloaderChoice.EXTLINUX
    assert plain(settings) == recorded
    with pytest.raises(ValueError):
        ConvertSettings.from_record({"bootloader": "lilo"})
