"""Read a fleet inventory: a plain Ansible YAML inventory (a file, or a folder with
``group_vars/`` and ``host_vars/``), loaded by ansible-core's own inventory machinery, so groups,
children, vars and their precedence are exactly Ansible's. The legacy servers are inventory
data only: nothing here connects to them.

Only Ansible's ``yaml`` inventory plugin is enabled (an executable inventory script is never
run). What Ansible would only warn about is refused, one line, before anything runs: a source
it cannot parse (bad YAML, a group cycle), an unexpected key in a group, a ``--limit`` pattern
that matches nothing. Host variables are then read into typed options (see options.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from p2vimage.core.errors import InputError, PreconditionError
from p2vimage.cutover.spec import Spec
from p2vimage.fleet.options import PREFIX, Context, HostOptions, parse

# Ansible settings forced while reading (whatever ansible.cfg says): YAML sources only, a
# source that does not parse is an error, and so is a host pattern that matches nothing.
_FORCED = {"INVENTORY_ENABLED": ["yaml"], "INVENTORY_UNPARSED_IS_FAILED": True,
           "INVENTORY_ANY_UNPARSED_IS_FAILED": True, "HOST_PATTERN_MISMATCH": "error"}
# Warnings that are no mistake in a fleet inventory (Ansible's advice on group names).
_HARMLESS = ("Invalid characters were found in group names",)
_NO_MATCH = "Could not match supplied host pattern"


@dataclasses.dataclass(frozen=True)
class FleetHost:
    """One legacy server of the fleet."""

    name: str  # the inventory name
    waves: tuple[str, ...]  # its groups, as Ansible orders them (by depth, then name)
    options: HostOptions
    variables: Mapping[str, Any]  # its p2v_ variables as Ansible merged them (plain values)


@dataclasses.dataclass(frozen=True)
class Fleet:
    """The hosts an inventory (and a ``--limit``) selects, in inventory order, and the waves:
    every group that holds one of them, in the order the inventory defines the groups."""

    path: Path
    limit: str | None
    hosts: tuple[FleetHost, ...]
    waves: Mapping[str, tuple[str, ...]]  # group → its selected hosts' names

    def host(self, name: str) -> FleetHost:
        """The selected host called ``name``. Raises KeyError."""
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)

    def wave(self, name: str) -> tuple[FleetHost, ...]:
        """The selected hosts of group ``name``, in inventory order. Raises KeyError."""
        members = set(self.waves[name])
        return tuple(h for h in self.hosts if h.name in members)


class _Ansible:
    """The parts of ansible-core used here, imported when first needed (0.4 s)."""

    def __init__(self) -> None:
        try:
            from ansible import constants
            from ansible.errors import AnsibleError
            from ansible.inventory.helpers import get_group_vars, sort_groups
            from ansible.inventory.manager import InventoryManager
            from ansible.parsing.dataloader import DataLoader
            from ansible.utils.display import Display
            from ansible.utils.vars import combine_vars
            from ansible.vars.plugins import get_vars_from_inventory_sources
        except ImportError as exc:
            raise PreconditionError(
                f"ansible-core is not installed ({exc.name} missing): fleet inventories are "
                "read with it", hint="run ci/setup, or pip install 'ansible-core>=2.17,<2.20'"
            ) from exc

        class Loader(DataLoader):  # type: ignore[misc]
            """Ansible's loader, less one copy: a file read with cache='none' (the inventory
            file, by the yaml plugin) is kept by nobody, yet Ansible deep-copies it before
            handing it over (a third of the load of a 1,000-host file)."""

            def load_from_file(self, file_name: str, cache: str = "all", unsafe: bool = False,
                               **kwargs: Any) -> Any:
                return super().load_from_file(file_name, cache=cache,
                                              unsafe=unsafe or cache == "none", **kwargs)

        self.C, self.AnsibleError, self.display = constants, AnsibleError, Display()
        self.get_group_vars, self.sort_groups = get_group_vars, sort_groups
        self.InventoryManager, self.DataLoader = InventoryManager, Loader
        self.combine_vars, self.plugin_vars = combine_vars, get_vars_from_inventory_sources

    @staticmethod
    def forget() -> None:
        """Empty the group_vars/host_vars plugin's module-wide caches of what it found on
        disk, so that a second load in one process reads the folders as they are now."""
        module = sys.modules.get("ansible.plugins.vars.host_group_vars")
        for name in ("FOUND", "NAK", "CANONICAL_PATHS"):
            cache = getattr(module, name, None)
            if isinstance(cache, dict | set):
                cache.clear()

    @contextlib.contextmanager
    def quiet(self, notes: list[str]) -> Iterator[None]:
        """Force _FORCED and collect Ansible's warnings into ``notes`` instead of printing
        them (deprecation notices are Ansible's business, dropped)."""
        saved = {name: getattr(self.C, name) for name in _FORCED}

        def warning(msg: str, *args: Any, **kwargs: Any) -> None:
            if not any(text in str(msg) for text in _HARMLESS):
                notes.append(str(msg))

        def error_as_warning(msg: str | None, exception: BaseException, *args: Any,
                             **kwargs: Any) -> None:
            notes.append(_reason(exception))

        def deprecated(*args: Any, **kwargs: Any) -> None:
            return None

        hooks: dict[str, Callable[..., None]] = {
            "warning": warning, "error_as_warning": error_as_warning, "deprecated": deprecated}
        for name, value in _FORCED.items():
            setattr(self.C, name, value)
        for name, hook in hooks.items():
            setattr(self.display, name, hook)
        try:
            yield
        finally:
            for name, value in saved.items():
                setattr(self.C, name, value)
            for name in hooks:
                vars(self.display).pop(name, None)


def _groups_hint(inventory: Any) -> str:
    names = [g for g in inventory.groups if g not in ("all", "ungrouped")]
    shown = ", ".join(names[:8]) + (", …" if len(names) > 8 else "")
    return f"name groups ({shown}) or hosts of the inventory" if names else \
        "name hosts of the inventory"


def _reason(exc: BaseException) -> str:
    """An Ansible error's own words, on one line (without its source excerpt)."""
    text = str(getattr(exc, "message", "") or exc)
    return " ".join(text.split())


def _plain(value: Any) -> Any:
    """Ansible's tagged values as plain Python ones (str, int, float, bool, list, dict)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


class _Variables:
    """Each host's variables merged as ``ansible-inventory --host`` merges them (Ansible's
    VariableManager without a play): the ``all`` group, then the host's groups in Ansible's
    order, in the order of its VARIABLE_PRECEDENCE setting; then the host's own. Built from
    the same Ansible functions, but the part that comes from the groups is computed once per
    set of groups instead of once per host (1,000 hosts: 0.05 s of CPU instead of
    0.22 s)."""

    def __init__(self, ans: _Ansible, inventory: Any, loader: Any, sources: list[str]) -> None:
        self.ans, self.inventory, self.loader, self.sources = ans, inventory, loader, sources
        self.by_groups: dict[tuple[str, ...], dict[str, Any]] = {}

    def plugins(self, entities: list[Any]) -> dict[str, Any]:
        """What the vars plugins (group_vars/, host_vars/) give ``entities``, merged."""
        data: dict[str, Any] = self.ans.plugin_vars(self.loader, self.sources, entities, "all")
        return data

    def groups_part(self, groups: list[Any]) -> dict[str, Any]:
        key = tuple(g.name for g in groups)
        if key in self.by_groups:
            return self.by_groups[key]
        everyone = self.inventory.groups["all"]
        parts: dict[str, Callable[[], Any]] = {
            "all_inventory": everyone.get_vars,
            "all_plugins_inventory": lambda: self.plugins([everyone]),
            "groups_inventory": lambda: self.ans.get_group_vars(groups),
            "groups_plugins_inventory": lambda: self.plugins(groups),
            # no playbook, so nothing lies beside one (as for ansible-inventory)
            "all_plugins_play": dict, "groups_plugins_play": dict}
        data: dict[str, Any] = {}
        for entry in self.ans.C.VARIABLE_PRECEDENCE:
            if entry not in parts:
                raise InputError(f"Ansible's VARIABLE_PRECEDENCE entry {entry!r} is not "
                                 "supported", hint=f"use only {', '.join(parts)}")
            data = self.ans.combine_vars(data, parts[entry]())
        self.by_groups[key] = data
        return data

    def of(self, host: Any, groups: list[Any]) -> dict[str, Any]:
        """``host``'s merged variables (``groups``: its groups but ``all``, sorted)."""
        data = self.ans.combine_vars(self.groups_part(groups), host.get_vars())
        merged: dict[str, Any] = self.ans.combine_vars(data, self.plugins([host]))
        return merged


def _parse(ans: _Ansible, loader: Any, sources: list[str], where: str) -> Any:
    """Ansible's InventoryManager over ``sources``; what Ansible only warns about is an
    error here."""
    notes: list[str] = []
    with ans.quiet(notes):
        try:
            inventory = ans.InventoryManager(loader=loader, sources=sources)
        except ans.AnsibleError as exc:
            reason = notes[0] if notes else _reason(exc)
            if not notes and reason.startswith("Completely failed to parse"):
                # the yaml plugin declined it (by its name), and no other plugin is enabled
                source = reason.rpartition(" ")[2]
                reason = (f"{source} holds no YAML inventory (every file in an inventory "
                          "folder is read as one)" if os.path.isdir(source) else
                          f"{source} is not YAML (only .yml, .yaml, .json or no extension "
                          "is read)")
            raise InputError(f"{where}: cannot read it: {reason}",
                             hint="fix the inventory (a plain Ansible YAML inventory); keep "
                             "cutover specs and other files out of an inventory folder") from exc
    if notes:
        raise InputError(f"{where}: {notes[0]}", hint="fix the inventory")
    return inventory


def _select(ans: _Ansible, inventory: Any, limit: str | None, where: str) -> list[Any]:
    """The hosts ``limit`` selects (all without one), in inventory order."""
    with ans.quiet([]):
        try:
            if limit is not None:
                inventory.subset(limit)
            chosen = {h.name for h in inventory.get_hosts("all")}
        except ans.AnsibleError as exc:
            reason = _reason(exc)
            if reason.startswith(_NO_MATCH):  # Ansible's words assume it goes on regardless
                reason = f"no group or host matches {reason.rpartition(': ')[2]!r}"
            raise InputError(f"{where}: --limit {limit}: {reason}",
                             hint=_groups_hint(inventory)) from exc
    # (only the inventory's own hosts: a limit of 'localhost' would add an implicit one)
    hosts = [h for h in inventory.hosts.values() if h.name in chosen]
    if not hosts:
        raise InputError(f"{where}: " + (f"--limit {limit} selects no host" if limit
                                         else "has no hosts"),
                         hint=_groups_hint(inventory) if limit
                         else "list the legacy servers under a group's hosts:")
    return hosts


def load(path: Path, limit: str | None = None) -> Fleet:
    """Read the inventory at ``path`` (a YAML file, or a folder of them with group_vars/ and
    host_vars/), select the hosts ``limit`` names (Ansible's patterns: groups, hosts,
    wildcards, ``!`` to exclude, ``&`` to intersect, ``,`` or ``:`` between them), and read
    their ``p2v_`` variables. Raises InputError (one line) for anything Ansible cannot read
    or warns about, a limit that selects nothing, and any unknown key or bad value of a
    selected host; PreconditionError when ansible-core is missing."""
    where = f"inventory {path}"
    if not path.exists():
        raise InputError(f"{where} does not exist",
                         hint="give an Ansible YAML inventory file or folder")
    ans = _Ansible()
    ans.forget()
    sources = [os.fspath(path.absolute())]
    loader = ans.DataLoader()
    inventory = _parse(ans, loader, sources, where)
    selected = _select(ans, inventory, limit, where)
    merge = _Variables(ans, inventory, loader, sources)
    base = path.absolute() if path.is_dir() else path.absolute().parent
    specs: dict[Path, Spec] = {}
    hosts = []
    notes: list[str] = []
    for host in selected:
        groups = ans.sort_groups([g for g in host.get_groups() if g.name != "all"])
        with ans.quiet(notes):
            try:
                variables = merge.of(host, groups)
            except ans.AnsibleError as exc:
                raise InputError(f"{where}: host {host.name}: {_reason(exc)}",
                                 hint="fix the inventory's group_vars/ or host_vars/") from exc
        if notes:
            raise InputError(f"{where}: host {host.name}: {notes[0]}",
                             hint="fix the inventory's group_vars/ or host_vars/")
        mine = {k: _plain(v) for k, v in variables.items() if k.startswith(PREFIX)}
        ctx = Context(base=base, where=f"{where}: host {host.name}", specs=specs)
        hosts.append(FleetHost(name=host.name, waves=tuple(g.name for g in groups),
                               options=parse(mine, ctx), variables=mine))
    names = [h.name for h in hosts]
    waves: dict[str, tuple[str, ...]] = {}
    for group in inventory.groups.values():
        if group.name != "all":
            members = {h.name for h in group.get_hosts()}
            if chosen := tuple(n for n in names if n in members):
                waves[group.name] = chosen
    return Fleet(path=path, limit=limit, hosts=tuple(hosts), waves=waves)
