"""Fleets: many legacy servers moved in waves, described by a plain Ansible YAML inventory.

Groups are the waves; ``p2v_*`` host and group variables carry each host's options (see
options.py for the keys). ``load(path, limit=None)`` reads an inventory with ansible-core's own
machinery and returns a :class:`Fleet` of typed, validated hosts, or raises InputError (one
line) before anything runs. The batch verbs build on it: hostrun.py (a host as ``run`` sees
it), scheduler.py (hosts in parallel within limits), state.py (the batch state file), live.py
(the live table), report.py and html.py (the reports), batch.py (plan, run, status) and
waves.py (cutover waves).
"""

from __future__ import annotations

from p2vimage.fleet.inventory import Fleet, FleetHost, load
from p2vimage.fleet.options import KEYS, STAGES, HostOptions

__all__ = ["KEYS", "STAGES", "Fleet", "FleetHost", "HostOptions", "load"]
