"""Fixtures the integration tests share: the OpenStack rig, started once per session for
every file that uses it (test_cloud.py, test_run_cloud.py)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.conftest import is_root
from tests.rig.openstack import Rig, running


@pytest.fixture(scope="session")
def cloud_rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """Keystone, two Glances, Cinder, Placement, Neutron and Nova, once per session."""
    if not is_root():
        pytest.skip("the rig runs as root")
    with running(tmp_path_factory.mktemp("openstack")) as rig:
        print(f"openstack rig in {rig.top}: {rig.timings}")
        yield rig
    # the logs stay for a look afterwards; the stored images and volumes (GiBs) go
    for store in [*rig.top.glob("glance*/images"), *rig.top.glob("cinder/volumes-*")]:
        shutil.rmtree(store, ignore_errors=True)
