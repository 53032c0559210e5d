"""Fleet inventories read by ansible-core itself: group/host variables merged exactly as
``ansible-inventory`` merges them (it is the oracle), Ansible host patterns for --limit, and
every bad inventory, key or value refused with one line before anything runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from p2vimage.core.errors import InputError, PreconditionError
from p2vimage.cutover import spec as specmod
from p2vimage.fleet import KEYS, STAGES, Fleet, load
from tests.conftest import REPO
from tests.unit.test_cutover_spec import SPEC


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def oracle(inventory: Path, limit: str | None = None) -> dict[str, dict[str, Any]]:
    """``ansible-inventory --list``: each selected host's merged p2v_ variables."""
    proc = subprocess.run([sys.executable, "-m", "ansible.cli.inventory", "-i",
                           os.fspath(inventory), "--list",
                           *(["--limit", limit] if limit else [])],
                          capture_output=True, text=True, check=True, cwd=inventory.parent)
    hostvars = json.loads(proc.stdout)["_meta"]["hostvars"]
    return {host: {k: v for k, v in hvars.items() if k.startswith("p2v_")}
            for host, hvars in hostvars.items()}


def snapshot(root: Path) -> dict[str, bytes]:
    return {os.fspath(p.relative_to(root)): p.read_bytes() if p.is_file() else b"/"
            for p in sorted(root.rglob("*"))}


# Every rule of Ansible's variable precedence that a fleet leans on, each set up so that a
# different rule would give a different value.
PRECEDENCE = {
    "hosts.yml": """
all:
  vars:
    p2v_flavor: all-inline
    p2v_network: all-inline
    p2v_stages: [upload, volume, boot]
  children:
    wave1:
      vars:
        p2v_flavor: wave1-inline
        p2v_cloud: wave1-inline
        p2v_key: wave1-inline
        p2v_volume_type: wave1-inline
      hosts:
        web1:
          p2v_flavor: web1-inline
          p2v_key: web1-inline
          p2v_size: 4G
        web2:
      children:
        db:
          vars:
            p2v_flavor: db-inline
            p2v_image_name: db-inline
          hosts:
            db1:
    wave2:
      vars:
        p2v_volume_type: wave2-inline
        p2v_availability_zone: wave2-inline
      hosts:
        web2:
        mail1:
    a_first:
      vars:
        ansible_group_priority: 5
        p2v_availability_zone: a_first-inline
      hosts:
        mail1:
""",
    "group_vars/all.yml": "p2v_network: all-file\n",
    "group_vars/wave1.yml": "p2v_cloud: wave1-file\np2v_image_name: wave1-file\n",
    "host_vars/web1.yml": "p2v_key: web1-file\n",
}
# What Ansible documents (docs: "Variable precedence: where should I put a variable?" and
# "How variables are merged"), written out: the oracle below confirms each one.
EXPECTED = {
    "web1": {"p2v_flavor": "web1-inline",  # a host's variable beats its groups'
             "p2v_key": "web1-file",  # host_vars/ beats the inventory file's host variable
             "p2v_cloud": "wave1-file",  # group_vars/ beats the inventory file's group vars
             "p2v_network": "all-file",  # group_vars/all.yml beats all: vars:
             "p2v_volume_type": "wave1-inline", "p2v_size": "4G"},
    "web2": {"p2v_flavor": "wave1-inline",
             "p2v_volume_type": "wave2-inline",  # same depth: the later name wins
             "p2v_availability_zone": "wave2-inline", "p2v_key": "wave1-inline"},
    "db1": {"p2v_flavor": "db-inline",  # a child group beats its parent
            "p2v_image_name": "wave1-file",  # any group_vars/ file beats inline group vars
            "p2v_cloud": "wave1-file"},
    # same depth, but a_first's ansible_group_priority (5, wave2's is 1) puts it later: it wins
    "mail1": {"p2v_availability_zone": "a_first-inline", "p2v_volume_type": "wave2-inline"},
}


@pytest.fixture
def precedence(tmp_path: Path) -> Path:
    return write(tmp_path / "inventory", PRECEDENCE)


def test_variables_merge_as_ansible_inventory_merges_them(precedence: Path) -> None:
    fleet = load(precedence)
    truth = oracle(precedence)
    assert [h.name for h in fleet.hosts] == ["web1", "web2", "db1", "mail1"]
    for host in fleet.hosts:
        assert dict(host.variables) == truth[host.name], host.name
        for key, value in EXPECTED[host.name].items():
            assert host.variables[key] == value, (host.name, key)


def test_options_are_typed_and_waves_are_groups(precedence: Path) -> None:
    fleet = load(precedence)
    web1 = fleet.host("web1").options
    assert web1.size == 4 << 30 and web1.flavor == "web1-inline"
    assert web1.stages == ("upload", "volume", "boot") == web1.run_stages
    assert web1.bootloader == "auto" and web1.disk_format == "qcow2" and web1.probes == ()
    assert fleet.host("db1").waves == ("wave1", "db")  # by depth: the parent first
    assert fleet.host("web2").waves == ("wave1", "wave2")
    assert list(fleet.waves) == ["wave1", "db", "wave2", "a_first"]  # as the file defines them
    assert fleet.waves["wave1"] == ("web1", "web2", "db1")
    assert [h.name for h in fleet.wave("wave2")] == ["web2", "mail1"]


LIMITS = [
    ("wave1", {"web1", "web2", "db1"}),
    ("db1", {"db1"}),
    ("web*", {"web1", "web2"}),
    ("wave1:!db", {"web1", "web2"}),
    ("wave1:&wave2", {"web2"}),
    ("db1,mail1", {"db1", "mail1"}),
    ("~web[12]", {"web1", "web2"}),
    ("all:!wave1", {"mail1"}),
]


@pytest.mark.parametrize(("limit", "hosts"), LIMITS)
def test_limit_takes_ansible_host_patterns(precedence: Path, limit: str,
                                           hosts: set[str]) -> None:
    fleet = load(precedence, limit=limit)
    assert {h.name for h in fleet.hosts} == hosts == set(oracle(precedence, limit))
    assert all(set(names) <= hosts for names in fleet.waves.values())
    assert fleet.limit == limit


def test_waves_hold_only_selected_hosts(precedence: Path) -> None:
    fleet = load(precedence, limit="wave2")
    assert fleet.waves == {"wave1": ("web2",), "wave2": ("web2", "mail1"),
                           "a_first": ("mail1",)}


def test_a_second_load_reads_the_folders_as_they_are_now(precedence: Path) -> None:
    """Ansible's group_vars plugin caches what it found, module-wide: a second load in one
    process (a scheduler re-reading its inventory) must see a file added since."""
    assert "p2v_conversion_host" not in load(precedence).host("mail1").variables
    write(precedence, {"group_vars/wave2.yml": "p2v_conversion_host: conv1\n"})
    assert load(precedence).host("mail1").options.conversion_host == "conv1"


BASE = "all:\n  children:\n    wave1:\n      hosts:\n        h1:\n{vars}"


def host_vars(**values: Any) -> dict[str, str]:
    lines = "".join(f"          {k}: {json.dumps(v)}\n" for k, v in
                    {"p2v_stages": ["upload"], **values}.items())
    return {"hosts.yml": BASE.format(vars=lines)}


# (files, limit, words the one line holds)
BAD_INVENTORIES = {
    "group cycle": ({"hosts.yml": "all:\n  children:\n    a:\n      children:\n        b:\n"
                                  "          hosts:\n            h1:\n    b:\n      children:\n"
                                  "        a:\n"}, None, ["recursive dependency loop"]),
    "typo in a group": ({"hosts.yml": "all:\n  children:\n    wave1:\n      host:\n"
                                      "        h1:\n"}, None, ["unexpected key (host)"]),
    "bad YAML": ({"hosts.yml": "all:\n  hosts:\n    h1: {p2v_size: [\n"}, None,
                 ["cannot read it", "YAML"]),
    "a key twice": ({"hosts.yml": "all:\n  hosts:\n    h1:\n      p2v_size: 4G\n"
                                  "      p2v_size: 5G\n"}, None, ["duplicate", "p2v_size"]),
    "not a mapping": ({"hosts.yml": "- h1\n- h2\n"}, None, ["cannot read it", "dictionary"]),
    "INI, not YAML": ({"hosts.ini": "[wave1]\nh1\n"}, None, ["hosts.ini is not YAML"]),
    "no hosts": ({"hosts.yml": "all:\n  children:\n    wave1:\n"}, None, ["has no hosts"]),
    "a folder in the folder": ({**host_vars(), "specs/.keep": ""}, None,
                               ["specs holds no YAML inventory"]),
    "group and host alike": ({"hosts.yml": "all:\n  children:\n    web:\n      hosts:\n"
                                           "        web:\n"}, None, ["same name: web"]),
    "bad group_vars": ({**host_vars(), "group_vars/wave1.yml": "p2v_size: [\n"}, None,
                       ["host h1", "YAML"]),
    "host_vars a list": ({**host_vars(), "host_vars/h1.yml": "- a\n"}, None,
                         ["host h1", "combine"]),
    "limit names nothing": (host_vars(), "wave9", ["--limit wave9", "matches 'wave9'",
                                                   "wave1"]),
    "limit: intersection with nothing": (host_vars(), "wave1:&nosuch",
                                         ["no group or host matches 'nosuch'"]),
    "limit selects no host": (host_vars(), "h1:!wave1", ["--limit h1:!wave1 selects no host"]),
    "limit file missing": (host_vars(), "@/nonexistent/retry", ["--limit", "limit file"]),
    "limit: implicit localhost": (host_vars(), "localhost", ["--limit localhost selects no"]),
    "unknown key": (host_vars(p2v_sise="4G"), None,
                    ["host h1: p2v_sise: unknown key", "did you mean p2v_size?"]),
    "unknown key from a group": ({**host_vars(), "group_vars/wave1.yml": "p2v_flavour: x\n"},
                                 None, ["host h1: p2v_flavour: unknown key", "p2v_flavor?"]),
    "cutover spec missing": (host_vars(p2v_cutover="specs/h1.toml"), None,
                             ["host h1: p2v_cutover: cannot read cutover spec",
                              "specs/h1.toml", "No such file"]),
}


@pytest.mark.parametrize("case", BAD_INVENTORIES)
def test_bad_inventories_are_refused_with_one_line(tmp_path: Path,
                                                   capfd: pytest.CaptureFixture[str],
                                                   case: str) -> None:
    files, limit, words = BAD_INVENTORIES[case]
    root = write(tmp_path / "inventory", files)
    path = root / "hosts.ini" if "hosts.ini" in files else root
    before = snapshot(tmp_path)
    with pytest.raises(InputError) as err:
        load(path, limit=limit)
    line = err.value.one_line()
    assert err.value.exit_code == 2 and "\n" not in line and "(hint: " in line
    assert line.startswith(f"error: inventory {path}: ")
    for word in words:
        assert word in line, (word, line)
    out = capfd.readouterr()
    assert out.out == out.err == ""  # Ansible's warnings became the error, nothing printed
    assert snapshot(tmp_path) == before


# (key, value, words): one bad value per kind of key
BAD_VALUES = [
    ("p2v_size", "lots", "cannot read 'lots' as a size"),
    ("p2v_size", -1, "cannot read -1 as a size"),
    ("p2v_swap_file", "1X", "cannot read '1X' as a size"),
    ("p2v_filesystem", "xfs", "'xfs' is not one of ext2, ext3, ext4"),
    ("p2v_bootloader", "lilo", "'lilo' is not one of auto, extlinux, grub2"),
    ("p2v_root_device", "sda1", "'sda1' is not one of uuid, vda1"),
    ("p2v_disk_format", "vmdk", "'vmdk' is not one of qcow2, raw"),
    ("p2v_initramfs_method", "dracut", "is not one of auto, chroot, appliance"),
    ("p2v_sync_profile", "all", "is not one of seed, none"),
    ("p2v_probes", "tcp:22", "is not a list"),
    ("p2v_probes", ["ftp:21"], "cannot read probe 'ftp:21'"),
    ("p2v_excludes", [["/srv"]], "is not a string"),
    ("p2v_source", "ftp://h1/", "unsupported source"),
    ("p2v_source", "missing/tree", "is not a directory"),
    ("p2v_stages", ["deploy"], "unknown stage 'deploy'"),
    ("p2v_stages", ["boot", "upload"], "out of order"),
    ("p2v_stages", ["upload", "upload"], "repeats a stage"),
    ("p2v_stages", [], "is empty"),
    ("p2v_accept_new_host_key", "maybe", "'maybe' is not true or false"),
    ("p2v_default_probe", 1, "1 is not true or false"),
    ("p2v_volume_size", 0, "0 is not a whole number of GiB"),
    ("p2v_ssh_options", ["-oProxyCommand=x"], "is not an ssh -o Key=value option"),
    ("p2v_bwlimit", "fast", "'fast' is not an rsync --bwlimit"),
    ("p2v_conversion_host", "conv 1", "'conv 1' is not a name"),
    ("p2v_flavor", "", "is empty"),
    ("p2v_image_name", "a\nb", "control characters"),
    ("p2v_security_groups", "default", "is not a list"),
    ("p2v_image", "/srv/{{ inventory_hostname }}.raw", "does not expand templates"),
    ("p2v_cutover", {"name": "h1"}, "p2v_cutover: public_ip: missing"),
    ("p2v_cutover", 7, "cannot read cutover spec"),
]


@pytest.mark.parametrize(("key", "value", "words"), BAD_VALUES)
def test_bad_values_name_host_key_and_problem(tmp_path: Path, key: str, value: Any,
                                             words: str) -> None:
    root = write(tmp_path, host_vars(**{key: value}))
    with pytest.raises(InputError) as err:
        load(root)
    line = err.value.one_line()
    assert line.startswith(f"error: inventory {root}: host h1: {key}: "), line
    assert words in line and "\n" not in line and "(hint: " in line


@pytest.mark.parametrize(("values", "words"), [
    ({"p2v_stages": ["boot"]}, "p2v_flavor: missing (the boot stage needs it)"),
    ({"p2v_stages": ["boot"], "p2v_flavor": "m1"}, "p2v_network: missing"),
    ({"p2v_stages": ["sync", "build"], "p2v_source": "."}, "sync stage needs an ssh://"),
    ({"p2v_stages": None}, "p2v_source: missing (the build stage needs it)"),
])
def test_what_a_stage_needs_is_checked_first(tmp_path: Path, values: dict[str, Any],
                                             words: str) -> None:
    with pytest.raises(InputError, match=r"host h1: ") as err:
        load(write(tmp_path, host_vars(**values)))
    assert words in err.value.message


def test_values_read_into_their_types(tmp_path: Path) -> None:
    root = write(tmp_path / "inventory", host_vars(
        p2v_stages=None, p2v_source="ssh://admin@legacy1:2222/", p2v_staging="../staging",
        p2v_image="/srv/images/h1.raw", p2v_size=5 << 30, p2v_swap_file="512M",
        p2v_probes=["tcp:25:220", "http:80:/:200:Welcome"], p2v_flavor=42,
        p2v_network="none", p2v_security_groups=["default", "web"],
        p2v_ssh_options=["ProxyJump=gw"], p2v_accept_new_host_key=True,
        p2v_conversion_host="conv1.example.org", p2v_excludes=None))
    opts = load(root).host("h1").options
    assert opts.source is not None and (opts.source.user, opts.source.host, opts.source.port) \
        == ("admin", "legacy1", 2222)
    assert opts.run_stages == STAGES and opts.stages is None
    assert opts.staging == root / "../staging"  # relative: from the inventory's folder
    assert opts.image == Path("/srv/images/h1.raw") and opts.size == 5 << 30
    assert opts.swap_file == 512 << 20 and [p.kind for p in opts.probes] == ["tcp", "http"]
    assert opts.flavor == "42" and opts.security_groups == ("default", "web")
    assert opts.excludes == () and opts.accept_new_host_key is True


def test_cutover_spec_from_a_file_or_inline(tmp_path: Path) -> None:
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "ns1.toml").write_text(SPEC)
    inline = tomllib.loads(SPEC)
    root = write(tmp_path, {"hosts.yml": BASE.format(vars=(
        "          p2v_stages: [upload]\n          p2v_cutover: specs/ns1.toml\n"
        "        h2:\n          p2v_stages: [upload]\n"
        f"          p2v_cutover: {json.dumps(inline)}\n"))})
    fleet = load(root / "hosts.yml")  # (a folder would read specs/ as inventory too)
    from_file = fleet.host("h1").options.cutover
    from_inline = fleet.host("h2").options.cutover
    assert from_file == specmod.load(tmp_path / "specs" / "ns1.toml")
    assert isinstance(from_inline, specmod.Spec) and from_file is not None
    for field in ("name", "public_ip", "legacy", "node", "probe", "hooks"):
        assert getattr(from_inline, field) == getattr(from_file, field), field
    bad = {**inline, "node": {**inline["node"], "interface": "eth0; reboot"}}
    write(tmp_path, {"hosts.yml": BASE.format(
        vars=f"          p2v_stages: [upload]\n          p2v_cutover: {json.dumps(bad)}\n")})
    with pytest.raises(InputError) as err:
        load(root / "hosts.yml")
    assert err.value.message.startswith(
        f"inventory {root}/hosts.yml: host h1: p2v_cutover: node.interface: 'eth0; reboot'")


def test_only_selected_hosts_are_validated(tmp_path: Path) -> None:
    """Tonight's wave runs although a later wave's spec is not written yet."""
    root = write(tmp_path, {"hosts.yml": BASE.format(vars="          p2v_stages: [upload]\n")
                            + "    wave2:\n      hosts:\n        h2:\n"
                              "          p2v_cutover: later.toml\n"})
    assert [h.name for h in load(root, limit="wave1").hosts] == ["h1"]
    with pytest.raises(InputError, match="host h2: p2v_cutover"):
        load(root)


def test_an_inventory_script_is_never_run(tmp_path: Path) -> None:
    """Only the YAML plugin reads: an executable inventory is not run, whatever ansible.cfg
    enables (ansible-inventory itself runs it, so the check can fail)."""
    marker = tmp_path / "ran"
    script = tmp_path / "inventory"
    script.write_text(f"#!/bin/sh\ntouch {marker}\necho '{{\"wave1\": [\"h1\"]}}'\n")
    script.chmod(0o755)
    subprocess.run([sys.executable, "-m", "ansible.cli.inventory", "-i", os.fspath(script),
                    "--list"], capture_output=True, check=True, cwd=tmp_path)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(InputError, match="cannot read it"):
        load(script)
    assert not marker.exists()


def test_no_groups_warning_for_dashes(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Ansible's advice on group names (a dash) is no mistake: loaded, nothing printed."""
    root = write(tmp_path, {"hosts.yml": BASE.replace("wave1", "wave-1").format(
        vars="          p2v_stages: [upload]\n")})
    assert list(load(root).waves) == ["wave-1"]
    assert capfd.readouterr().err == ""


def test_missing_path_and_missing_ansible(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"inventory .*/nope does not exist"):
        load(tmp_path / "nope")
    root = write(tmp_path, host_vars())
    proc = subprocess.run([sys.executable, "-c", (
        "import sys; sys.modules['ansible'] = None\n"
        "from pathlib import Path\nfrom p2vimage.core.errors import PreconditionError\n"
        "from p2vimage.fleet import load\n"
        f"try:\n    load(Path({os.fspath(root)!r}))\n"
        "except PreconditionError as e:\n    print(e.one_line())\n")],
        capture_output=True, text=True, check=True, cwd=REPO)
    assert proc.stdout.startswith("error: ansible-core is not installed")
    assert PreconditionError.exit_code == 3


def test_readme_lists_every_key() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("### fleet inventory", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"`(p2v_\w+)`", section))
    assert listed == set(KEYS), (set(KEYS) - listed, listed - set(KEYS))


def generate(root: Path, hosts: int = 1000) -> Path:
    """A fleet of HOSTS in 10 waves of 2 sub-waves, with group_vars and some host_vars."""
    lines = ["all:", "  vars:", "    p2v_cloud: prod", "    p2v_network: tenant",
             "  children:"]
    per_wave = hosts // 10
    for w in range(10):
        lines += [f"    wave{w}:", "      vars:", f"        p2v_availability_zone: az{w % 3}",
                  "      children:"]
        for sub in range(2):
            lines += [f"        wave{w}_{sub}:", "          hosts:"]
            for i in range(per_wave // 2):
                n = w * per_wave + sub * (per_wave // 2) + i
                lines += [f"            host{n:04d}:",
                          f"              p2v_source: ssh://root@host{n:04d}.example.org/"]
        write(root, {f"group_vars/wave{w}.yml": f"p2v_flavor: m1.w{w}\np2v_size: {w + 1}G\n"})
    for n in range(0, hosts, 7):
        write(root, {f"host_vars/host{n:04d}.yml": "p2v_size: 20G\n"})
    write(root, {"hosts.yml": "\n".join(lines) + "\n"})
    return root


def test_a_thousand_hosts_load(tmp_path: Path) -> None:
    root = generate(tmp_path / "fleet")
    started = time.monotonic()
    fleet: Fleet = load(root)
    seconds = time.monotonic() - started
    print(f"\n1,000-host inventory loaded and validated in {seconds:.2f} s")
    assert len(fleet.hosts) == 1000 and len(fleet.waves) == 30
    truth = oracle(root)
    assert {h.name: dict(h.variables) for h in fleet.hosts} == truth
    h7, h8 = fleet.host("host0007").options, fleet.host("host0008").options
    assert (h7.size, h8.size) == (20 << 30, 1 << 30)
    assert h8.flavor == "m1.w0" and h8.availability_zone == "az0" and h8.cloud == "prod"
    assert fleet.host("host0999").waves == ("wave9", "wave9_1")
    assert len(load(root, limit="wave3_1:!host0360").hosts) == 49
