"""Time the whole ``p2vimage demo`` with a warm example cache (one untimed warm-up run
builds the example tree if needed).

    sudo .venv/bin/python -m bench.demo [--rounds 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import P2VIMAGE, REPO


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from p2vimage.demo.examples import ensure_fixture

    ensure_fixture("bullseye-i386")  # warm cache: the tree is built once, outside the timing
    runs = []
    with tempfile.TemporaryDirectory(prefix="p2vimage-bench-", dir="/var/tmp") as tmpdir:
        for r in range(args.rounds):
            started = time.perf_counter()
            subprocess.run([*P2VIMAGE, "--workdir", str(Path(tmpdir) / f"d{r}"), "demo"],
                           cwd=REPO, check=True, capture_output=True)
            runs.append(time.perf_counter() - started)
            print(f"round {r + 1}: demo {runs[-1]:.2f} s", file=sys.stderr)
    result = {"demo_s": statistics.median(runs), "runs": runs, "target_s": 90}
    print(json.dumps(result, indent=2) if args.json else
          "\n".join(f"{k}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
