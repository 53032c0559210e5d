"""run's cloud stages without a cloud: how an earlier attempt's image, volume and server are
judged (openstacksdk's own resource classes, filled as the services answer), the marks and
the run id a work directory keeps, the cloud options handed over as typed settings, and the
refusals that come before any stage runs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from openstack.block_storage.v3.volume import Volume
from openstack.compute.v2.server import Server
from openstack.image.v2.image import Image

from p2vimage import pipeline
from p2vimage.cli.main import cli
from p2vimage.cloud import cinder, marks
from p2vimage.cloud.options import CloudSettings, Compression, DiskFormat
from p2vimage.core.errors import StageError
from p2vimage.sync.source import parse_source
from p2vimage.sync.stage import SyncOptions
from tests.conftest import assert_one_line_error, p2v

# openstacksdk warns about its own internals when resources are filled from attributes
pytestmark = pytest.mark.filterwarnings("ignore:The _compute_attributes method")
ADOPT, WAIT, REPLACE = marks.Verdict.ADOPT, marks.Verdict.WAIT, marks.Verdict.REPLACE


def _image(status: str = "active", checksum: str = "md5", **props: str) -> Image:
    attrs: dict[str, Any] = dict(id="I1", status=status, checksum=checksum,
                                 tags=["p2vimage:host=h", "p2vimage:run=R"], **props)
    return Image.existing(**attrs)


def test_an_image_is_adopted_only_when_active_verified_and_from_the_same_image() -> None:
    verified = {marks.SOURCE: "K", marks.VERIFIED: "md5"}
    assert marks.judge_image(_image(**verified), "K")[0] is ADOPT
    for status in ("queued", "saving", "importing", "killed"):  # a killed upload's leftovers
        verdict, why = marks.judge_image(_image(status, **verified), "K")
        assert verdict is REPLACE and status in why
    # active, but the kill came before p2vimage compared the hashes: never trusted
    assert marks.judge_image(_image(), "K")[0] is REPLACE
    assert marks.judge_image(_image(checksum="other", **verified), "K")[0] is REPLACE
    # made from the image before a rebuild (same host and run, other local image)
    verdict, why = marks.judge_image(_image(**verified), "K2")
    assert verdict is REPLACE and "another local image" in why


def _volume(status: str = "available", **kw: Any) -> Volume:
    attrs: dict[str, Any] = dict(id="V1", status=status, size=2, availability_zone="nova",
                                 volume_type="__DEFAULT__",
                                 volume_image_metadata={"image_id": "I1"}, attachments=[])
    attrs.update(kw)
    return Volume.existing(**attrs)


def _vopts(**kw: Any) -> cinder.VolumeOptions:
    attrs: dict[str, Any] = dict(cloud="c", image="I1", az=None, size_gb=None, name=None,
                                 host="h", run="R")
    attrs.update(kw)
    return cinder.VolumeOptions(**attrs)


def test_a_volume_is_waited_for_adopted_or_replaced() -> None:
    assert marks.judge_volume(_volume(), _vopts(), [])[0] is ADOPT
    for status in ("creating", "downloading", "attaching", "detaching"):
        assert marks.judge_volume(_volume(status), _vopts(), [])[0] is WAIT
    for status in ("error", "error_restoring"):
        assert marks.judge_volume(_volume(status), _vopts(), [])[0] is REPLACE
    assert marks.judge_volume(_volume(), _vopts(image="I2"), [])[0] is REPLACE
    assert marks.judge_volume(_volume(), _vopts(az="az2"), [])[0] is REPLACE
    assert marks.judge_volume(_volume(), _vopts(size_gb=3), [])[0] is REPLACE
    assert marks.judge_volume(_volume(), _vopts(az="nova", size_gb=2), [])[0] is ADOPT
    # in use by this run's own test server: adopted; by anyone else's: not
    used = _volume("in-use", attachments=[{"server_id": "S1"}])
    assert marks.judge_volume(used, _vopts(), ["S1"])[0] is ADOPT
    verdict, why = marks.judge_volume(used, _vopts(), ["S9"])
    assert verdict is REPLACE and "S1" in why


def _server(status: str = "ACTIVE", **kw: Any) -> Server:
    attrs: dict[str, Any] = dict(id="S1", status=status, attached_volumes=[{"id": "V1"}],
                                 flavor={"original_name": "m1.small", "vcpus": 1},
                                 addresses={})
    attrs.update(kw)
    return Server.existing(**attrs)


def test_a_server_is_waited_for_adopted_or_replaced() -> None:
    small = {"m1.small", "F1"}
    assert marks.judge_server(_server(), "V1", small, None)[0] is ADOPT
    assert marks.judge_server(_server("BUILD"), "V1", small, None)[0] is WAIT
    for status in ("ERROR", "SHUTOFF"):
        assert marks.judge_server(_server(status), "V1", small, None)[0] is REPLACE
    assert marks.judge_server(_server(), "V2", small, None)[0] is REPLACE
    assert marks.judge_server(_server(), "V1", {"m1.medium"}, None)[0] is REPLACE
    assert marks.judge_server(_server(flavor={"id": "F1"}), "V1", small, None)[0] is ADOPT
    on_net = _server(addresses={"rig-net": [{"addr": "10.0.0.5"}]})
    assert marks.judge_server(on_net, "V1", small, "rig-net")[0] is ADOPT
    assert marks.judge_server(on_net, "V1", small, None)[0] is REPLACE
    assert marks.judge_server(_server(), "V1", small, "rig-net")[0] is REPLACE


def test_the_host_mark_and_the_cloud_stages_stamps(tmp_path: Path) -> None:
    image = tmp_path / "legacy1.raw"
    opts = pipeline.RunOptions(source=tmp_path, image=image)
    assert opts.host == "legacy1"
    synced = pipeline.RunOptions(source=tmp_path, image=image, sync=SyncOptions(
        source=parse_source("ssh://root@ns1.example.org/"), staging=tmp_path))
    assert synced.host == "ns1.example.org"
    named = pipeline.RunOptions(source=tmp_path, image=image, cloud=CloudSettings(host="web"))
    assert named.host == "web"
    options = pipeline.stage_options(named)
    assert options["upload"] == {"host": "web", "cloud": None, "image_name": None,
                                 "disk_format": "qcow2", "compression": "zstd"}
    raw = pipeline.stage_options(pipeline.RunOptions(
        source=tmp_path, image=image, cloud=CloudSettings(disk_format=DiskFormat.RAW)))
    assert raw["upload"]["compression"] == "none" and raw["upload"]["host"] == "legacy1"
    assert set(options) == {"build", "convert", "smoke", "upload", "volume", "boot"}
    assert options["boot"]["security_groups"] == [] and "flavor" in options["boot"]


def test_the_run_id_is_made_once_and_kept(tmp_path: Path) -> None:
    opts = pipeline.RunOptions(source=tmp_path, image=tmp_path / "h.raw",
                               workdir=tmp_path / "work")
    first = pipeline.cloud_run(opts)
    assert pipeline.cloud_run(opts) == first
    record = json.loads((tmp_path / "work" / pipeline.RUN_FILE).read_text())
    assert record["run"] == first and record["host"] == "h"
    (tmp_path / "work" / pipeline.RUN_FILE).write_text("{")
    with pytest.raises(StageError, match="cannot read the run id"):
        pipeline.cloud_run(opts)  # never a new id: it would orphan what the cloud holds


def test_run_hands_the_cloud_options_over_typed(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    monkeypatch.delenv("OS_CLOUD", raising=False)
    seen: list[pipeline.RunOptions] = []

    def run(opts: pipeline.RunOptions) -> dict[str, Any]:
        seen.append(opts)
        return {"stages": {}}

    monkeypatch.setattr(pipeline, "run", run)
    monkeypatch.setattr(pipeline, "lines", lambda results: [])
    image = str(tmp_path / "x.raw")
    result = CliRunner().invoke(cli, [
        "run", "/tree", "-o", image, "--until", "boot", "--os-cloud", "prod",
        "--source-host", "legacy1", "--image-name", "legacy1-img", "--disk-format", "raw",
        "--compression", "none", "--volume-size", "20", "--volume-type", "ssd", "--az",
        "node7", "--flavor", "m1.medium", "--network", "none", "--key", "ops",
        "--security-group", "web", "--security-group", "ssh"])
    assert result.exit_code == 0, result.output
    assert seen[0].last == "boot" and seen[0].cloud == CloudSettings(
        cloud="prod", host="legacy1", image_name="legacy1-img", disk_format=DiskFormat.RAW,
        compression=Compression.NONE, volume_size_gb=20, volume_type="ssd",
        availability_zone="node7", flavor="m1.medium", network="none", key="ops",
        security_groups=("web", "ssh"))
    assert type(seen[0].cloud.disk_format) is DiskFormat
    result = CliRunner().invoke(cli, ["run", "/tree", "-o", image])
    assert result.exit_code == 0 and seen[1].cloud == CloudSettings() and seen[1].last == "smoke"


def _untouched(tmp_path: Path) -> list[str]:
    return sorted(os.fspath(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))


@pytest.mark.parametrize(("args", "words"), [
    (["--until", "boot", "--network", "none"], ("boot stage needs --flavor and --network",)),
    (["--until", "boot", "--flavor", "m1.small"], ("--network",)),
    (["--until", "boot", "--flavor", "m1.small", "--network", "none",
      "--security-group", "web"], ("security groups need a network",)),
    (["--until", "upload", "--disk-format", "raw", "--compression", "zstd"],
     ("raw upload cannot be compressed",)),
    (["--until", "upload", "--os-cloud", "nosuch"], ("cloud 'nosuch' is not defined",)),
])
def test_cloud_settings_are_refused_before_any_stage_runs(
        tmp_path: Path, args: list[str], words: tuple[str, ...]) -> None:
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/fstab").write_text("/dev/sda1 / ext3 defaults 0 1\n")
    (tmp_path / "clouds.yaml").write_text('{"clouds": {"other": {"auth": {}}}}')
    before = _untouched(tmp_path)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("OS_")},
           "OS_CLIENT_CONFIG_FILE": str(tmp_path / "clouds.yaml"), "OS_CLOUD": "other"}
    proc = p2v("run", tree, "-o", tmp_path / "h.raw", *args, env=env)
    assert_one_line_error(proc, 2, *words)
    assert _untouched(tmp_path) == before  # no image, no work directory, no run id


def test_from_volume_needs_the_upload_stamp(tmp_path: Path) -> None:
    image = tmp_path / "h.raw"
    image.write_bytes(b"\0" * 4096)
    work = tmp_path / "h.raw.work"
    work.mkdir()
    (work / "boot.stamp.json").write_text("{}")
    proc = p2v("run", tmp_path, "-o", image, "--from", "volume", "--until", "boot",
               "--flavor", "m1.small", "--network", "none", "--os-cloud", "x")
    assert_one_line_error(proc, 2, "no upload stamp", "--from upload")
    assert sorted(p.name for p in work.iterdir()) == ["boot.stamp.json"]
