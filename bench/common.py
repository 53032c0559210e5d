"""Shared pieces of the benchmark scripts: timing, medians, the report."""

from __future__ import annotations

import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
P2VIMAGE = [sys.executable, "-m", "p2vimage"]


def sh(argv: Sequence[str | os.PathLike[str]], **kwargs: object) -> None:
    """Run a command (in the repository unless ``cwd`` is given), failing loudly."""
    kwargs.setdefault("cwd", REPO)
    subprocess.run([os.fspath(a) for a in argv], check=True,
                   **kwargs)  # type: ignore[call-overload]


def timed(fn: Callable[[], None]) -> float:
    """Wall-clock seconds of one call."""
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def alternate(methods: dict[str, Callable[[], None]], rounds: int,
              cleanup: Callable[[], None],
              cpu: dict[str, list[tuple[float, float]]] | None = None) -> dict[str, list[float]]:
    """Run every method once per round, in a new shuffled order each round (seeded: the same
    orders every run); return the timings.

    Shuffled, not rotated: a rotation keeps each method behind the same neighbour, and
    one that follows a heavy writer (cp -a + sync, virt-make-fs) would always pay for the
    disk still absorbing it. ``cpu`` receives each run's (user, system) CPU seconds of the
    processes it ran and waited for (less disturbed by other load than the wall-clock time).
    """
    times: dict[str, list[float]] = {name: [] for name in methods}
    shuffler = random.Random(1)
    for r in range(rounds):
        order = list(methods)
        shuffler.shuffle(order)
        for name in order:
            cleanup()
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            seconds = timed(methods[name])
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            times[name].append(seconds)
            user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
            if cpu is not None:
                cpu.setdefault(name, []).append((user, system))
            print(f"round {r + 1}: {name}: {seconds:.2f} s (cpu user {user:.2f} s, "
                  f"sys {system:.2f} s)", file=sys.stderr)
    cleanup()
    return times


def report(title: str, times: dict[str, list[float]], ratios: dict[str, tuple[str, str]],
           extra: dict[str, object], as_json: bool) -> None:
    """Print medians, spreads ((max - min) / median) and the named ratios: of the medians,
    and the median of the ratios within each round (steadier when the load drifts)."""
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    spreads = {name: (max(ts) - min(ts)) / medians[name] if medians[name] else 0.0
               for name, ts in times.items()}
    computed = {label: medians[a] / medians[b] for label, (a, b) in ratios.items()}
    paired = {label: statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))
              for label, (a, b) in ratios.items()}
    if as_json:
        print(json.dumps({"title": title, "times": times, "medians": medians,
                          "spreads": spreads, "ratios": computed, "paired_ratios": paired,
                          **extra}, indent=2))
        return
    print(f"# {title}")
    for name, median in medians.items():
        runs = ", ".join(f"{t:.2f}" for t in times[name])
        print(f"{name:30} median {median:6.2f} s  spread {spreads[name]:4.0%}   runs {runs}")
    print(f"{'ratio':40} {'of medians':>10} {'per round':>10}")
    for label, ratio in computed.items():
        print(f"{label:40} {ratio:9.2f}x {paired[label]:9.2f}x")
    for key, value in extra.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k:44} {v}")
        else:
            print(f"{key}: {value}")
