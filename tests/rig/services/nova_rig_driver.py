"""The compute driver of the test rig: Nova's own fake driver, reporting the guest
architectures a real x86_64 KVM host reports (i686 and x86_64), so that 32-bit legacy images
(architecture=i686) are scheduled as they are on a real cloud."""

from typing import Any

from nova.objects import fields  # type: ignore[import-not-found]
from nova.virt import fake  # type: ignore[import-not-found]


class RigFakeDriver(fake.FakeDriver):  # type: ignore[misc]
    def get_available_resource(self, nodename: str) -> Any:
        resources = super().get_available_resource(nodename)
        resources["supported_instances"] = [
            (arch, fields.HVType.KVM, fields.VMMode.HVM)
            for arch in (fields.Architecture.X86_64, fields.Architecture.I686)]
        return resources
