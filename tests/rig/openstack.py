"""The OpenStack test rig: real Keystone, Glance, Cinder, Placement, Neutron and Nova from PyPI,
on loopback ports.

```
 Keystone 30   uWSGI  keystone.wsgi.api    sqlite, fernet tokens, regions One and Two
 Glance 33     uWSGI  glance.wsgi.api      RegionOne: file store, glance-direct import converted
                                           to raw (the image_conversion plugin)
 Glance 33     uWSGI  (second instance)    RegionTwo: image_size_cap 16 MiB (the HTTP 413)
 Cinder 29     one process (services/cinder_aio.py): API + scheduler + backends file-a (AZ
               "nova") and file-b (AZ "az2"), each a file-backed subclass of Cinder's own fake
               driver (services/cinder_file_driver.py); oslo.messaging transport fake:/
 Placement 16  uWSGI  placement.wsgi.api
 Neutron 29    uWSGI  neutron.wsgi.api     ML2 with tags, no agents; a mechanism driver that
                                           binds every port (services/neutron_rig_mech.py);
                                           rig-net with rig-subnet 192.0.2.0/24
 Nova 34       one process (services/nova_aio.py): API + conductor + scheduler + compute with
               Nova's fake virt driver (services/nova_rig_driver.py); transport fake:/
```

The ``fake:/`` transport keeps its queues in class attributes: services reach each other only
inside one process, hence the two all-in-one launchers. ``Rig(top, nova=False)`` leaves out
Placement, Neutron and Nova.

The services run from their own venv, built once from ``openstack-requirements.txt`` (exact
pins) under ``<cache_dir>/openstack/venv-<hash>``: built under a lock into a temporary
directory, renamed when complete. Every tool of that venv is run as ``venv/bin/python
venv/bin/TOOL`` so the renamed venv works although its scripts' shebangs name the temporary
directory. Each service runs in its own process group; :meth:`Rig.stop` kills them all.

``clouds.yaml`` (in the rig's directory; point ``OS_CLIENT_CONFIG_FILE`` at it) has
``rig`` (admin, RegionOne), ``rig-small`` (RegionTwo, the capped Glance), ``rig-regions``
(both regions, RegionOne first) and ``rig-badpass``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from p2vimage.core.paths import cache_dir

HERE = Path(__file__).resolve().parent
# Run by the services' Python: a directory of their own, so that this module (named like the
# openstacksdk package) never shadows it on their sys.path.
SERVICES = HERE / "services"
PINS = HERE / "openstack-requirements.txt"
PYTHON = "/usr/bin/python3"
PASSWORD = "rig-admin-secret"  # a throwaway password for a loopback-only test cloud
SMALL_CAP = 16 << 20  # RegionTwo's Glance refuses images larger than this (HTTP 413)
AZS = ("nova", "az2")
SUBNET = "192.0.2.0/24"  # rig-net's subnet (TEST-NET-1)
# Nova's threads share SQLite files: wait up to 60 s for a lock, not pysqlite's 5 s (a boot
# next to a delete on a loaded machine failed with "database is locked")
BUSY = "?timeout=60"


def venv_path() -> Path:
    """Where the services venv for the current pin list lives."""
    key = hashlib.sha256(PINS.read_bytes() + PYTHON.encode()).hexdigest()[:12]
    return cache_dir() / "openstack" / f"venv-{key}"


def ensure_venv() -> tuple[Path, float]:
    """The services venv (built if missing); returns (path, seconds spent building)."""
    final = venv_path()
    if (final / ".complete").exists():
        return final, 0.0
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / ".complete").exists():
            return final, 0.0
        started = time.monotonic()
        tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run([PYTHON, "-m", "venv", str(tmp)], check=True)
        proc = subprocess.run(
            [str(tmp / "bin/python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
             "-r", str(PINS)], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RuntimeError(f"installing the OpenStack services failed:\n{proc.stderr[-4000:]}")
        (tmp / ".complete").write_text(f"{time.monotonic() - started:.1f}\n")
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
        for stale in final.parent.glob("venv-*"):  # made from an older pin list
            if stale != final:
                shutil.rmtree(stale, ignore_errors=True)
        return final, time.monotonic() - started


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ini(sections: dict[str, dict[str, Any]]) -> str:
    out = []
    for name, values in sections.items():
        out.append(f"[{name}]")
        out.extend(f"{key} = {value}" for key, value in values.items())
        out.append("")
    return "\n".join(out)


def _term_with_parent() -> None:
    """In a service: SIGTERM when the test process dies, however it dies (no orphans)."""
    ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


class Rig:
    """The running services; :meth:`start` brings them up, :meth:`stop` kills them all."""

    def __init__(self, top: Path, nova: bool = True) -> None:
        self.top = top
        self.logs = top / "logs"
        self.venv, self.install_seconds = ensure_venv()
        self.python = str(self.venv / "bin/python")
        self.nova = nova
        names = ["keystone", "glance", "glance2", "cinder"] + (
            ["placement", "neutron", "nova"] if nova else [])
        self.ports = {name: free_port() for name in names}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.clouds_yaml = top / "clouds.yaml"
        self.timings: dict[str, float] = {"venv_install": round(self.install_seconds, 1)}
        self.project_id = ""
        self.network_id = ""
        self.subnet_id = ""
        # P2VIMAGE_RIG_DEBUG=1: the services log at debug level
        self.debug = "true" if os.environ.get("P2VIMAGE_RIG_DEBUG") else "false"

    # -- addresses and environment -------------------------------------------------------
    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    @property
    def auth_url(self) -> str:
        return self.url("keystone") + "/v3"

    @property
    def env(self) -> dict[str, str]:
        """The environment that makes openstacksdk (and p2vimage) use this rig."""
        clean = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
        return {**clean, "OS_CLIENT_CONFIG_FILE": str(self.clouds_yaml)}

    def tool(self, name: str) -> list[str]:
        return [self.python, str(self.venv / "bin" / name)]

    # -- configuration --------------------------------------------------------------------
    def _authtoken(self) -> dict[str, Any]:
        return {"www_authenticate_uri": self.url("keystone"), "auth_url": self.url("keystone"),
                "auth_type": "password", "project_domain_name": "Default",
                "user_domain_name": "Default", "project_name": "admin", "username": "admin",
                "password": PASSWORD, "service_token_roles_required": "true"}

    def _uwsgi_ini(self, name: str, module: str, threads: int) -> Path:
        path = self.top / name / "uwsgi.ini"
        path.write_text(_ini({"uwsgi": {
            "http-socket": f"127.0.0.1:{self.ports[name]}", "module": module, "master": "true",
            "processes": 1, "threads": threads, "die-on-term": "true", "need-app": "true",
            "lazy-apps": "true", "buffer-size": 65535,
            # Glance reads request bodies in chunks; keystoneauth keeps connections alive,
            # which uWSGI's plain http-socket does not do: tell the client to close.
            "chunked-input-limit": 16 << 20, "http-keepalive": "false",
            "add-header": "Connection: close", "socket-timeout": 120,
        }}))
        return path

    def _write_configs(self) -> None:
        ks = self.top / "keystone"
        ks.mkdir(parents=True)
        (ks / "keystone.conf").write_text(_ini({
            "DEFAULT": {"log_file": self.logs / "keystone.log", "debug": self.debug},
            "database": {"connection": f"sqlite:///{ks}/keystone.db"},
            "token": {"provider": "fernet"},
            "fernet_tokens": {"key_repository": ks / "fernet-keys"},
            "credential": {"key_repository": ks / "credential-keys"},
        }))
        self._uwsgi_ini("keystone", "keystone.wsgi.api:application", 4)
        for name, cap in (("glance", None), ("glance2", SMALL_CAP)):
            gl = self.top / name
            for sub in ("images", "staging", "tasks"):
                (gl / sub).mkdir(parents=True)
            default: dict[str, Any] = {
                "log_file": self.logs / f"{name}.log", "enabled_backends": "fs:file",
                "debug": self.debug,
                "worker_self_reference_url": self.url(name),
                "enabled_import_methods": "[glance-direct]",
            }
            if cap:
                default["image_size_cap"] = cap
            else:  # RegionOne converts what it imports to raw, as Ceph-backed clouds do
                (gl / "glance-image-import.conf").write_text(_ini({
                    "image_import_opts": {"image_import_plugins": "['image_conversion']"},
                    "image_conversion": {"output_format": "raw"}}))
            (gl / "glance-api.conf").write_text(_ini({
                "DEFAULT": default,
                "database": {"connection": f"sqlite:///{gl}/glance.db"},
                "paste_deploy": {"flavor": "keystone",
                                 "config_file": self.venv / "etc/glance/glance-api-paste.ini"},
                "keystone_authtoken": self._authtoken(),
                "glance_store": {"default_backend": "fs"},
                # the import plugins run qemu-img under a python -m oslo_concurrency.prlimit:
                # this venv's python, not the one uWSGI reports as sys.executable
                "wsgi": {"python_interpreter": self.python},
                "fs": {"filesystem_store_datadir": gl / "images"},
                "os_glance_staging_store": {"filesystem_store_datadir": gl / "staging"},
                "os_glance_tasks_store": {"filesystem_store_datadir": gl / "tasks"},
            }))
            self._uwsgi_ini(name, "glance.wsgi.api:application", 4)
        ci = self.top / "cinder"
        ci.mkdir(parents=True)
        backends = {f"file-{chr(ord('a') + i)}": az for i, az in enumerate(AZS)}
        sections: dict[str, dict[str, Any]] = {
            "DEFAULT": {
                "transport_url": "fake:/", "auth_strategy": "keystone", "host": "rig",
                "enabled_backends": ",".join(backends), "storage_availability_zone": AZS[0],
                "default_availability_zone": AZS[0],
                "allow_availability_zone_fallback": "false", "az_cache_duration": 1,
                "osapi_volume_listen": "127.0.0.1",
                "osapi_volume_listen_port": self.ports["cinder"], "osapi_volume_workers": 1,
                "glance_api_servers": self.url("glance"), "state_path": ci,
                "image_conversion_dir": ci / "conversion",
                "api_paste_config": self.venv / "etc/cinder/api-paste.ini",
                "log_file": self.logs / "cinder.log", "report_interval": 5,
                "debug": self.debug,
            },
            "database": {"connection": f"sqlite:///{ci}/cinder.db"},
            "oslo_concurrency": {"lock_path": ci / "locks"},
            "coordination": {"backend_url": f"file://{ci}/coordination"},
            "keystone_authtoken": self._authtoken(),
        }
        for backend, az in backends.items():
            sections[backend] = {"volume_driver": "cinder_file_driver.FileVolumeDriver",
                                 "volume_backend_name": backend,
                                 "backend_availability_zone": az}
        (ci / "cinder.conf").write_text(_ini(sections))
        if self.nova:
            self._write_nova_configs()

    def _service_auth(self) -> dict[str, Any]:
        return {"auth_type": "password", "auth_url": self.auth_url, "username": "admin",
                "password": PASSWORD, "project_name": "admin", "user_domain_name": "Default",
                "project_domain_name": "Default", "region_name": "RegionOne"}

    def _write_nova_configs(self) -> None:
        pl = self.top / "placement"
        pl.mkdir(parents=True)
        (pl / "placement.conf").write_text(_ini({
            "DEFAULT": {"log_file": self.logs / "placement.log"},
            "placement_database": {"connection": f"sqlite:///{pl}/placement.db"},
            "api": {"auth_strategy": "keystone"},
            "keystone_authtoken": self._authtoken(),
        }))
        self._uwsgi_ini("placement", "placement.wsgi.api:application", 4)
        ne = self.top / "neutron"
        ne.mkdir(parents=True)
        (ne / "neutron.conf").write_text(_ini({
            "DEFAULT": {"log_file": self.logs / "neutron.log", "debug": self.debug,
                        "core_plugin": "ml2", "service_plugins": "tag",
                        "auth_strategy": "keystone",
                        "transport_url": "fake:/", "state_path": ne,
                        "api_paste_config": self.venv / "etc/neutron/api-paste.ini",
                        "rpc_workers": 0, "rpc_state_report_workers": 0,
                        "notify_nova_on_port_status_changes": "false",
                        "notify_nova_on_port_data_changes": "false"},
            "database": {"connection": f"sqlite:///{ne}/neutron.db"},
            "keystone_authtoken": self._authtoken(),
            # No agents: networks, subnets, ports, security groups and tags are real, and
            # services/neutron_rig_mech.py binds every port as an agent's driver would (with
            # no driver Nova fails the boot: PortBindingFailed), so servers boot with NICs.
            "ml2": {"type_drivers": "flat,vxlan", "tenant_network_types": "vxlan",
                    "mechanism_drivers": "rig", "extension_drivers": "port_security"},
            "ml2_type_vxlan": {"vni_ranges": "1:1000"},
            "oslo_concurrency": {"lock_path": ne / "locks"},
        }))
        self._uwsgi_ini("neutron", "neutron.wsgi.api:application", 4)
        # ML2 loads mechanism drivers by entry point only: a dist-info on Neutron's path
        # names the rig's driver.
        info = ne / "site" / "p2vimage_rig-0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: p2vimage-rig\n"
                                       "Version: 0\n")
        (info / "entry_points.txt").write_text(
            "[neutron.ml2.mechanism_drivers]\nrig = neutron_rig_mech:RigMechanismDriver\n")
        nv = self.top / "nova"
        (nv / "state").mkdir(parents=True)
        (nv / "nova.conf").write_text(_ini({
            "DEFAULT": {"log_file": self.logs / "nova.log", "transport_url": "fake:/",
                        "debug": self.debug,
                        "host": "rig", "state_path": nv / "state",
                        "compute_driver": "nova_rig_driver.RigFakeDriver",
                        "default_availability_zone": "nova", "concurrency_backend": "threading",
                        "instances_path": nv / "instances"},
            "api": {"auth_strategy": "keystone"},
            "api_database": {"connection": f"sqlite:///{nv}/nova_api.db{BUSY}"},
            "database": {"connection": f"sqlite:///{nv}/nova.db{BUSY}"},
            "wsgi": {"api_paste_config": self.venv / "etc/nova/api-paste.ini"},
            "keystone_authtoken": self._authtoken(),
            "placement": self._service_auth(),
            "cinder": {**self._service_auth(), "os_region_name": "RegionOne"},
            "glance": {"endpoint_override": self.url("glance")},
            "neutron": self._service_auth(),
            # Cinder lets only Nova detach a volume Nova attached: Nova proves who it is with
            # a service token (a user with the "service" role, given in _register_catalog).
            "service_user": {**self._service_auth(), "send_service_user_token": "true"},
            "scheduler": {"discover_hosts_in_cells_interval": 2},
            "oslo_concurrency": {"lock_path": nv / "locks"},
            "vnc": {"enabled": "false"},
        }))

    def write_clouds_yaml(self) -> None:
        def cloud(region: str, password: str) -> dict[str, Any]:
            return {"auth": {"auth_url": self.auth_url, "username": "admin",
                             "password": password, "project_name": "admin",
                             "user_domain_name": "Default", "project_domain_name": "Default"},
                    "region_name": region, "identity_api_version": 3}

        clouds = {"rig": cloud("RegionOne", PASSWORD), "rig-small": cloud("RegionTwo", PASSWORD),
                  "rig-badpass": cloud("RegionOne", "not-the-password"),
                  "rig-regions": cloud("RegionOne", PASSWORD)}
        # both regions, RegionOne first (the default); --os-region-name picks one
        del clouds["rig-regions"]["region_name"]
        clouds["rig-regions"]["regions"] = ["RegionOne", "RegionTwo"]
        # JSON is YAML: no YAML library needed in the test venv.
        self.clouds_yaml.write_text(json.dumps({"clouds": clouds}, indent=2))

    # -- processes ------------------------------------------------------------------------
    def _run(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        with open(self.logs / f"{name}.out", "ab") as out:
            proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, cwd=self.top,
                                  env={**os.environ, **(env or {})}, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{name} failed ({proc.returncode}):\n{self.tail(name)}")

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        out = open(self.logs / f"{name}.out", "ab")  # noqa: SIM115 - closed below
        self.procs[name] = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.top,
            env={**os.environ, **env}, start_new_session=True, preexec_fn=_term_with_parent)
        out.close()

    def _uwsgi(self, name: str, env: dict[str, str]) -> None:
        self._spawn(name, [*self.tool("uwsgi"), "--ini", str(self.top / name / "uwsgi.ini")],
                    env)

    def start_glance(self, name: str = "glance") -> None:
        self._uwsgi(name, {"OS_GLANCE_CONFIG_DIR": str(self.top / name)})

    def _keystone_setup(self) -> None:
        conf = ["--config-file", str(self.top / "keystone/keystone.conf")]
        manage = self.tool("keystone-manage")
        self._run("keystone-manage", [*manage, *conf, "db_sync"])
        for what in ("fernet_setup", "credential_setup"):
            self._run("keystone-manage", [*manage, *conf, what, "--keystone-user", "root",
                                          "--keystone-group", "root"])
        self._run("keystone-manage", [
            *manage, *conf, "bootstrap", "--bootstrap-password", PASSWORD,
            "--bootstrap-region-id", "RegionOne",
            *(arg for iface in ("admin", "internal", "public")
              for arg in (f"--bootstrap-{iface}-url", self.auth_url))])

    def _nova_setup(self) -> None:
        nv = self.top / "nova"
        manage = [*self.tool("nova-manage"), "--config-file", str(nv / "nova.conf")]
        self._run("nova-manage", [*manage, "api_db", "sync"])
        self._run("nova-manage", [*manage, "cell_v2", "map_cell0", "--database_connection",
                                  f"sqlite:///{nv}/nova_cell0.db{BUSY}"])
        self._run("nova-manage", [*manage, "cell_v2", "create_cell", "--name", "cell1",
                                  "--database_connection", f"sqlite:///{nv}/nova.db{BUSY}",
                                  "--transport-url", "fake:/"])
        self._run("nova-manage", [*manage, "db", "sync"])

    def start(self) -> None:
        started = time.monotonic()
        self.logs.mkdir(parents=True)
        self._write_configs()
        self.write_clouds_yaml()
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            jobs = [pool.submit(self._keystone_setup)]
            for name in ("glance", "glance2"):
                jobs.append(pool.submit(self._run, f"{name}-manage", [
                    *self.tool("glance-manage"), "--config-file",
                    str(self.top / name / "glance-api.conf"), "db_sync"]))
            jobs.append(pool.submit(self._run, "cinder-manage", [
                *self.tool("cinder-manage"), "--config-file",
                str(self.top / "cinder/cinder.conf"), "db", "sync"]))
            if self.nova:
                jobs.append(pool.submit(self._run, "placement-manage", [
                    *self.tool("placement-manage"), "--config-file",
                    str(self.top / "placement/placement.conf"), "db", "sync"]))
                jobs.append(pool.submit(self._nova_setup))
                jobs.append(pool.submit(self._run, "neutron-db", [
                    self.python, str(SERVICES / "neutron_db.py"),
                    f"sqlite:///{self.top}/neutron/neutron.db"]))
            for job in jobs:
                job.result()
        self.timings["db_setup"] = round(time.monotonic() - started, 1)
        self._uwsgi("keystone", {"OS_KEYSTONE_CONFIG_FILES": str(self.top /
                                                                "keystone/keystone.conf")})
        self.start_glance("glance")
        self.start_glance("glance2")
        self._spawn("cinder", [self.python, str(SERVICES / "cinder_aio.py"), "--config-file",
                               str(self.top / "cinder/cinder.conf")],
                    {"PYTHONPATH": str(SERVICES)})
        if self.nova:
            self._uwsgi("placement", {"OS_PLACEMENT_CONFIG_DIR": str(self.top / "placement")})
            self._uwsgi("neutron", {
                "OS_NEUTRON_CONFIG_FILES": str(self.top / "neutron/neutron.conf"),
                "PYTHONPATH": f"{SERVICES}:{self.top / 'neutron/site'}"})
        self.wait_http("keystone")
        self._register_catalog()
        if self.nova:  # its compute service reports to placement as it starts
            self.wait_http("placement")
            self._spawn("nova", [self.python, str(SERVICES / "nova_aio.py"),
                                 str(self.ports["nova"])],
                        {"OS_NOVA_CONFIG_FILES": f"{self.venv}/etc/nova/api-paste.ini;"
                                                 f"{self.top}/nova/nova.conf"})
        for name in ("glance", "glance2", "cinder", *(("placement", "neutron", "nova")
                                                      if self.nova else ())):
            self.wait_http(name)
        self._wait_zones()
        if self.nova:
            self._wait_compute()
        self.timings["start_total"] = round(time.monotonic() - started, 1)

    def stop(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()

    def kill_glance_worker(self, name: str = "glance") -> int:
        """SIGKILL Glance's uWSGI worker (the master respawns one): a crash mid-request."""
        workers = _children(self.procs[name].pid)
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        return len(workers)

    def wait_http(self, name: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited ({proc.returncode}):\n{self.tail(name)}")
            try:
                with urllib.request.urlopen(self.url(name) + "/", timeout=5):
                    return
            except urllib.error.HTTPError:
                return  # it answers (300 Multiple Choices for the version documents)
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"{name} did not answer within {timeout:g} s:\n{self.tail(name)}")

    # -- the catalog, over plain HTTP -----------------------------------------------------
    def token(self, password: str = PASSWORD) -> str:
        body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": "admin", "domain": {"name": "Default"}, "password": password}}},
            "scope": {"project": {"name": "admin", "domain": {"name": "Default"}}}}}
        req = urllib.request.Request(self.auth_url + "/auth/tokens", method="POST",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            self.project_id = json.load(resp)["token"]["project"]["id"]
            return str(resp.headers["X-Subject-Token"])

    def api(self, method: str, url: str, body: Any = None,
            headers: dict[str, str] | None = None) -> Any:
        """A JSON request with an admin token; returns the decoded answer (or None)."""
        req = urllib.request.Request(url, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json",
                                              "X-Auth-Token": self.token(), **(headers or {})})
        with urllib.request.urlopen(req, timeout=60) as resp:
            data = resp.read()
        return json.loads(data) if data else None

    def _register_catalog(self) -> None:
        ident = self.auth_url
        # Services call each other with a service token (Nova → Cinder): keystonemiddleware
        # accepts one only from a user with the "service" role (bootstrap made the role).
        user = self.api("GET", ident + "/users?name=admin")["users"][0]["id"]
        role = self.api("GET", ident + "/roles?name=service")["roles"][0]["id"]
        self.api("PUT", f"{ident}/projects/{self.project_id}/users/{user}/roles/{role}")
        self.api("POST", ident + "/regions", {"region": {"id": "RegionTwo"}})
        entries = [("glance", "image", "RegionOne", self.url("glance")),
                   ("glance", "image", "RegionTwo", self.url("glance2")),
                   ("cinderv3", "volumev3", "RegionOne",
                    self.url("cinder") + "/v3/$(project_id)s")]
        if self.nova:
            entries += [("placement", "placement", "RegionOne", self.url("placement")),
                        ("neutron", "network", "RegionOne", self.url("neutron")),
                        ("nova", "compute", "RegionOne", self.url("nova") + "/v2.1")]
        services: dict[str, str] = {}
        for name, kind, region, url in entries:
            if kind not in services:
                services[kind] = self.api("POST", ident + "/services", {
                    "service": {"name": name, "type": kind}})["service"]["id"]
            for iface in ("public", "internal", "admin"):
                self.api("POST", ident + "/endpoints", {"endpoint": {
                    "service_id": services[kind], "interface": iface, "url": url,
                    "region_id": region}})

    def _wait_zones(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        seen: set[str] = set()
        while time.monotonic() < deadline:
            self.token()
            zones = self.api("GET", f"{self.url('cinder')}/v3/{self.project_id}"
                                    "/os-availability-zone")
            seen = {z["zoneName"] for z in zones["availabilityZoneInfo"]
                    if z["zoneState"]["available"]}
            if seen >= set(AZS):
                return
            time.sleep(0.5)
        raise RuntimeError(f"Cinder zones {sorted(seen)} after {timeout:g} s, want {AZS}:\n"
                           f"{self.tail('cinder')}")

    def _wait_compute(self, timeout: float = 300) -> None:
        """Until the fake compute node is a hypervisor the scheduler can place on; then make
        the flavors the tests use."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hypervisors = self.api("GET", self.url("nova") + "/v2.1/os-hypervisors")
            if hypervisors["hypervisors"]:
                break
            time.sleep(1)
        else:
            raise RuntimeError(f"no hypervisor after {timeout:g} s:\n{self.tail('nova')}")
        for name, ram, disk in (("m1.small", 512, 1), ("m1.medium", 2048, 10)):
            self.api("POST", self.url("nova") + "/v2.1/flavors", {"flavor": {
                "name": name, "ram": ram, "vcpus": 1, "disk": disk}})
        self.network_id = self.api("POST", self.url("neutron") + "/v2.0/networks", {
            "network": {"name": "rig-net"}})["network"]["id"]
        self.subnet_id = self.api("POST", self.url("neutron") + "/v2.0/subnets", {
            "subnet": {"name": "rig-subnet", "network_id": self.network_id, "ip_version": 4,
                       "cidr": SUBNET, "enable_dhcp": False}})["subnet"]["id"]

    def download(self, url: str, dest: Path) -> Path:
        """GET ``url`` (with an admin token) into the file ``dest``."""
        req = urllib.request.Request(url, headers={"X-Auth-Token": self.token()})
        with urllib.request.urlopen(req, timeout=300) as resp, open(dest, "wb") as out:
            shutil.copyfileobj(resp, out, 1 << 20)
        return dest

    # -- reading what the services stored -------------------------------------------------
    def glance_file(self, image_id: str, name: str = "glance") -> Path:
        return self.top / name / "images" / image_id

    def volume_file_exists(self, volume_id: str) -> bool:
        return any((self.top / "cinder").glob(f"volumes-*/volume-{volume_id}"))

    def volume_file(self, volume_id: str) -> Path:
        found = list((self.top / "cinder").glob(f"volumes-*/volume-{volume_id}"))
        if len(found) != 1:
            raise AssertionError(f"volume file for {volume_id}: {found}")
        return found[0]

    def tail(self, *names: str, lines: int = 40) -> str:
        """The last lines of the named services' logs (all of them without names)."""
        out = []
        files = sorted(self.logs.glob("*")) if not names else [
            p for n in names for p in sorted(self.logs.glob(f"{n}*"))]
        for path in files:
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path}\n" + "\n".join(text))
        return "\n".join(out)


@contextlib.contextmanager
def running(top: Path, nova: bool = True) -> Iterator[Rig]:
    """A started rig in ``top``, stopped (every process group killed) on exit."""
    rig = Rig(top, nova=nova)
    try:
        rig.start()
    except Exception:
        rig.stop()
        print(rig.tail(), file=sys.stderr)
        raise
    try:
        yield rig
    finally:
        rig.stop()
