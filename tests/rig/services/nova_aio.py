"""Nova all-in-one for the test rig: API, conductor, scheduler and a fake-driver compute in ONE
process, native threads (no eventlet).

Runs inside the services venv: ``python nova_aio.py PORT`` with ``OS_NOVA_CONFIG_FILES`` set.
The services talk over oslo.messaging's in-memory ``fake:/`` transport, which only reaches
within one process; the API is served by wsgiref's threading server in this process. The
compute service uses the database directly (as in Nova's own functional tests) instead of
through the conductor, since both are here.
"""

import os
import sys

os.environ.setdefault("OS_NOVA_DISABLE_EVENTLET_PATCHING", "true")

from nova import monkey_patch  # type: ignore[import-not-found]

monkey_patch.patch(backend="threading")

import socketserver  # noqa: E402
import threading  # noqa: E402
from wsgiref import simple_server  # noqa: E402

from nova.api.openstack import wsgi_app  # type: ignore[import-not-found]  # noqa: E402


class _Server(socketserver.ThreadingMixIn, simple_server.WSGIServer):
    daemon_threads = True


class _Quiet(simple_server.WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write("api: " + (format % args) + "\n")


def main() -> None:
    port = int(sys.argv[1])
    sys.argv = [sys.argv[0]]  # nova parses sys.argv as its command line
    app = wsgi_app.init_application("osapi_compute", "nova-aio")

    import nova_rig_driver  # type: ignore[import-not-found]
    import os_vif  # type: ignore[import-not-found]
    from nova import privsep, service  # type: ignore[import-not-found]
    from nova.compute import rpcapi as compute_rpcapi  # type: ignore[import-not-found]
    from nova.conductor import rpcapi as conductor_rpcapi  # type: ignore[import-not-found]
    from nova.scheduler import rpcapi as scheduler_rpcapi  # type: ignore[import-not-found]

    # Nova loads compute drivers from the nova.virt package only: put the rig's there.
    sys.modules["nova.virt.nova_rig_driver"] = nova_rig_driver
    # The rig runs as root: privileged helpers run in-process (there is no sudo here).
    privsep.sys_admin_pctxt.set_client_mode(False)
    os_vif.initialize()
    services = [
        service.Service.create(binary="nova-conductor", topic=conductor_rpcapi.RPC_TOPIC),
        service.Service.create(binary="nova-scheduler", topic=scheduler_rpcapi.RPC_TOPIC),
        service.Service.create(binary="nova-compute", topic=compute_rpcapi.RPC_TOPIC),
    ]
    for svc in services:
        svc.start()
    # Map the compute host into its cell now (nova-manage cell_v2 discover_hosts), instead
    # of waiting for the scheduler's periodic discovery.
    from nova import context  # type: ignore[import-not-found]
    from nova.objects import host_mapping  # type: ignore[import-not-found]

    host_mapping.discover_hosts(context.get_admin_context())
    server = simple_server.make_server("127.0.0.1", port, app, server_class=_Server,
                                       handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stderr.write(f"nova-aio: API on 127.0.0.1:{port}\n")
    threading.Event().wait()


if __name__ == "__main__":
    try:
        main()
    except BaseException:
        import traceback

        traceback.print_exc()
        os._exit(1)  # the services' threads would keep a half-started process alive
