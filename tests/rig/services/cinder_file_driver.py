"""A Cinder volume driver for the test rig: Cinder's own fake driver, with a file per volume.

Runs inside the services venv (Cinder imports it by ``volume_driver``). There is no
device-mapper on the test host, so no LVM backend: each volume is a sparse file
``<state_path>/volumes-<backend>/volume-<id>`` that tests read back to prove what Cinder wrote.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from cinder.image import image_utils  # type: ignore[import-not-found]
from cinder.tests import fake_driver  # type: ignore[import-not-found]
from oslo_config import cfg  # type: ignore[import-not-found]

CONF = cfg.CONF


class FileVolumeDriver(fake_driver.FakeLoggingVolumeDriver):  # type: ignore[misc]
    """Volumes are sparse files; image → volume writes the raw image into the file."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        group = self.configuration.config_group or "default"
        self.backend_name = self.configuration.safe_get("volume_backend_name") or group
        self.protocol = "iSCSI"
        self.directory = os.path.join(CONF.state_path, f"volumes-{group}")

    def do_setup(self, context: Any) -> None:
        os.makedirs(self.directory, exist_ok=True)

    def local_path(self, volume: Any) -> str:
        return os.path.join(self.directory, f"volume-{volume['id']}")

    def create_volume(self, volume: Any) -> Any:
        update = super().create_volume(volume)
        with open(self.local_path(volume), "wb") as handle:
            handle.truncate(int(volume["size"]) << 30)
        return update

    def delete_volume(self, volume: Any) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.local_path(volume))

    def copy_image_to_volume(self, context: Any, volume: Any, image_service: Any,
                             image_id: str, disable_sparse: bool = False) -> None:
        image_utils.fetch_to_raw(context, image_service, image_id, self.local_path(volume),
                                 self.configuration.volume_dd_blocksize,
                                 size=volume["size"], disable_sparse=disable_sparse)
        # qemu-img wrote a file as long as the image: give it the volume's size again
        path = self.local_path(volume)
        if os.path.getsize(path) < int(volume["size"]) << 30:
            os.truncate(path, int(volume["size"]) << 30)

    def copy_volume_to_image(self, context: Any, volume: Any, image_service: Any,
                             image_meta: Any) -> None:
        image_utils.upload_volume(context, image_service, image_meta, self.local_path(volume),
                                  volume)
