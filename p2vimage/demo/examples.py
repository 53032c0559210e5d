"""The built-in examples: legacy-like Linux root trees, built with debootstrap (or reused
from cache), that ``p2vimage demo`` and the tests migrate.

``python -m p2vimage.demo.examples NAME [--cache DIR] [--force]`` prints the path of the
finished root tree on stdout; progress goes to stderr and every command's output to
``build.log`` beside the tree. From Python: ``ensure_fixture("bullseye-i386") -> Path``.
A variant (``bullseye-i386-novirtio``) is a copy of another fixture's finished tree, then
changed; its base is built first when missing (``--force`` rebuilds only the variant).

Trees live at ``<cache>/fixtures/<NAME>-<key>/root``; the key hashes the recipe modules
(chroot, recipes, hard) and NAME, so editing a recipe rebuilds; trees of other keys are
removed once unused for two days (a checkout of another version may still use them). A build
happens in ``.tmp-*`` and is renamed into place only when complete, under an flock on
``<cache>/fixtures/.lock``. Needs root, debootstrap, acl, attr, libcap2-bin and a Debian
mirror (debootstrap's default, or ``P2VIMAGE_MIRROR``); variants also
need lsinitramfs (initramfs-tools-core).

This is the test rig's recipe, not a pipeline stage: it runs its own commands (chroot,
debootstrap, mknod…) with their output in build.log, instead of going through run.py.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from p2vimage.demo.chroot import (
    DEFAULT_CACHE,
    HOST_TOOLS,
    Context,
    FixtureError,
    bootstrap,
    clean_tree,
    install_packages,
    log,
    remove_tree,
    unmount_all,
)
from p2vimage.demo.hard import add_hard_content, check_tree
from p2vimage.demo.recipes import RECIPES, VARIANTS, copy_base

STALE_SECONDS = 2 * 86400
RECIPE_FILES = ("chroot.py", "recipes.py", "hard.py")  # what a tree is made by


def fixture_key(name: str) -> str:
    """First 12 hex digits of sha256(the recipe modules' source + NAME)."""
    here = Path(__file__).parent
    source = b"".join((here / f).read_bytes() for f in RECIPE_FILES)
    return hashlib.sha256(source + name.encode()).hexdigest()[:12]


def cache_dir(cache: str | os.PathLike[str] | None) -> Path:
    """The cache directory: argument, else $P2VIMAGE_CACHE, else /var/cache/p2vimage."""
    return Path(cache or os.environ.get("P2VIMAGE_CACHE") or DEFAULT_CACHE).absolute()


def preflight(variant: bool = False) -> None:
    """Refuse early, with a hint, when not root or a host tool is missing."""
    if os.geteuid() != 0:
        raise FixtureError("building a fixture needs root (debootstrap, mknod, chroot)")
    path = os.environ.get("PATH", os.defpath) + ":/usr/sbin:/sbin"
    tools = (*HOST_TOOLS, "lsinitramfs") if variant else HOST_TOOLS
    if missing := [t for t in tools if not shutil.which(t, path=path)]:
        raise FixtureError(f"missing host tools {missing}: apt-get install debootstrap acl attr "
                           "libcap2-bin" + (" initramfs-tools-core" if variant else ""))


def ensure_fixture(name: str, cache: str | os.PathLike[str] | None = None, *,
                   force: bool = False, mirror: str | None = None) -> Path:
    """Return the root tree of fixture `name`, building it first if it is not cached.

    A variant's base is built too if it is not cached (``force`` rebuilds only `name`).
    Raises KeyError for an unknown name and FixtureError when the build fails.
    """
    variant = VARIANTS.get(name)
    RECIPES[variant.base if variant else name]  # KeyError for an unknown name
    fixtures = cache_dir(cache) / "fixtures"
    final = fixtures / f"{name}-{fixture_key(name)}"
    if final.is_dir() and not force:
        return final / "root"
    preflight(variant is not None)
    fixtures.mkdir(parents=True, exist_ok=True)
    with open(fixtures / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another build to release %s", lock.name)
            fcntl.flock(lock, fcntl.LOCK_EX)
        return build_locked(name, cache_dir(cache), force=force, mirror=mirror)


def build_locked(name: str, cache: Path, *, force: bool, mirror: str | None) -> Path:
    """ensure_fixture's work, with the lock held (a variant's base is built under it too)."""
    variant = VARIANTS.get(name)
    recipe = RECIPES[variant.base if variant else name]
    fixtures = cache / "fixtures"
    key = fixture_key(name)
    final = fixtures / f"{name}-{key}"
    if final.is_dir() and not force:  # built by whoever held the lock before us
        return final / "root"
    for stale in fixtures.glob(".tmp-*"):  # we hold the lock: these are from crashes
        log.info("removing stale %s", stale)
        remove_tree(stale)
    base = build_locked(variant.base, cache, force=False, mirror=mirror) if variant else None
    work = fixtures / f".tmp-{name}-{key}-{os.getpid()}"
    work.mkdir()
    debs = cache / "debootstrap-debs" / f"{recipe.suite}-{recipe.arch}"
    debs.mkdir(parents=True, exist_ok=True)
    ctx = Context(name, recipe, work, debs, mirror or os.environ.get("P2VIMAGE_MIRROR") or None,
                  base)
    steps: tuple[Callable[[Context], None], ...] = (
        (copy_base, variant.derive) if variant
        else (bootstrap, install_packages, clean_tree, add_hard_content))
    start = time.monotonic()
    try:
        for step in steps:
            log.info("%s: %s", name, step.__name__)
            step(ctx)
        facts = check_tree(ctx) | (variant.check(ctx) if variant else {})
    except BaseException:
        unmount_all(work)
        log.error("build of %s failed; log kept in %s", name, ctx.logfile)
        raise
    facts |= {"name": name, "key": key, "seconds": f"{time.monotonic() - start:.0f}",
              "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (work / "build.json").write_text(json.dumps(facts, indent=1) + "\n")
    if final.exists():  # --force: swap the new tree in, then drop the old one
        old = fixtures / f".tmp-old-{name}-{key}-{os.getpid()}"
        final.rename(old)
        work.rename(final)
        remove_tree(old)
    else:
        work.rename(final)
    # The full match spares other fixtures whose names start with this one's; a tree of
    # another key may belong to another checkout that is still running: only stale ones go.
    for other in fixtures.glob(f"{name}-*"):
        if re.fullmatch(re.escape(name) + r"-[0-9a-f]{12}", other.name) and other != final \
                and time.time() - other.stat().st_mtime > STALE_SECONDS:
            log.info("removing outdated %s", other)
            remove_tree(other)
    log.info("%s built in %ss: %s", name, facts["seconds"], final / "root")
    return final / "root"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point: print the fixture's root path; 1 on failure, 130 on ^C."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = (*RECIPES, *VARIANTS)
    parser.add_argument("name", metavar="NAME", choices=sorted(names), help=", ".join(names))
    parser.add_argument("--cache", help=f"default: $P2VIMAGE_CACHE or {DEFAULT_CACHE}")
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    parser.add_argument("--debug", action="store_true", help="log every command")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="examples: %(message)s", stream=sys.stderr)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so finally: blocks unmount
    try:
        print(ensure_fixture(args.name, args.cache, force=args.force))
    except FixtureError as err:
        log.error("error: %s", err)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
