"""Cinder all-in-one for the test rig: API, scheduler and every volume backend in ONE process.

Runs inside the services venv: ``python cinder_aio.py --config-file cinder.conf``. The services
talk over oslo.messaging's in-memory ``fake:/`` transport, whose exchanges are class-level
state, so they only reach each other inside one process; that is why this launcher exists
instead of cinder-api, cinder-scheduler and cinder-volume.
"""

from cinder import monkey_patch  # type: ignore[import-not-found]

monkey_patch.patch()

import sys  # noqa: E402

from cinder import i18n  # type: ignore[import-not-found]  # noqa: E402

i18n.enable_lazy()

from cinder import coordination, objects, rpc, service, utils, version  # noqa: E402  # type: ignore[import-not-found]
from cinder.common import config, constants  # noqa: E402  # type: ignore[import-not-found]
from oslo_config import cfg  # noqa: E402  # type: ignore[import-not-found]
from oslo_log import log as logging  # noqa: E402  # type: ignore[import-not-found]
from oslo_service import service as os_service  # noqa: E402  # type: ignore[import-not-found]

CONF = cfg.CONF
_report_state = service.Service.report_state


def _report_own_state(self: service.Service) -> None:
    # Cinder keeps the service's database id in a CLASS attribute (one service per process);
    # with several services in this process every heartbeat would land on the last one's row
    # (and flip its availability zone). Each service reports its own row.
    service.Service.service_id = self.origin_service_id
    _report_state(self)


service.Service.report_state = _report_own_state


def main() -> None:
    # The rig runs as root: privileged helpers run in this process instead of a privsep
    # daemon started through sudo (which the test host does not have).
    from cinder import privsep  # type: ignore[import-not-found]

    privsep.sys_admin_pctxt.set_client_mode(False)
    objects.register_all()
    CONF(sys.argv[1:], project="cinder", version=version.version_string())
    config.set_middleware_defaults()
    logging.setup(CONF, "cinder")
    utils.monkey_patch()
    coordination.COORDINATOR.start()
    rpc.init(CONF)
    launcher = os_service.ServiceLauncher(CONF, restart_method="mutate")
    launcher.launch_service(service.Service.create(binary=constants.SCHEDULER_BINARY))
    for backend in filter(None, CONF.enabled_backends):
        launcher.launch_service(service.Service.create(
            host=f"{CONF.host}@{backend}", service_name=backend,
            binary=constants.VOLUME_BINARY, coordination=True))
    launcher.launch_service(service.WSGIService("osapi_volume"))
    launcher.wait()


if __name__ == "__main__":
    main()
