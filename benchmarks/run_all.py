"""Run every benchmark in this folder, one after the other, each in its own process.

Speed and accuracy targets live here, not in the tests: each script prints the ratios it
measured in one run. Usage: ``python benchmarks/run_all.py [name ...]`` (names without
``bench_`` and ``.py``, e.g. ``meshft nufft``); output also goes to ``benchmarks/results/``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None):
    names = (argv if argv is not None else sys.argv[1:]) or None
    scripts = sorted(HERE.glob("bench_*.py"))
    if names:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in names]
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    failed = []
    for script in scripts:
        print(f"\n=== {script.name} ===", flush=True)
        t0 = time.perf_counter()
        with open(out_dir / f"{script.stem}.txt", "w") as log:
            proc = subprocess.Popen(
                [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            for line in proc.stdout:
                sys.stdout.write(line)
                log.write(line)
            proc.wait()
        print(f"--- {script.name}: exit {proc.returncode} after {time.perf_counter() - t0:.0f} s", flush=True)
        if proc.returncode:
            failed.append(script.name)
    if failed:
        print("failed: " + ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
