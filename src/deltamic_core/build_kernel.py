"""Build the native mesh Fourier transform kernel now instead of at its first use.

    python -m deltamic_core.build_kernel [--force] [--verbose] [--require]

Prints where the build lives and which kernel clone runs. The build is cached per user
(``DELTAMIC_KERNEL_CACHE`` overrides the place) and keyed by torch, Python, compiler, flags and
source text, so running this again is instant unless something changed. ``--force`` rebuilds
(also after an earlier failure, e.g. once a compiler is installed). ``--require`` exits with
status 1 when the kernel cannot be built (``make setup`` uses it; the package itself works
without the kernel).
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m deltamic_core.build_kernel", description=__doc__.splitlines()[0])
    p.add_argument("--force", action="store_true", help="rebuild even if a build (or a failed attempt) exists")
    p.add_argument("--verbose", action="store_true", help="show the compiler's commands and output")
    p.add_argument("--require", action="store_true", help="exit with status 1 if the kernel cannot be built")
    args = p.parse_args(argv)

    from .meshft import _build

    plan = _build.plan()
    try:
        mod = _build.build(
            force=args.force, verbose=args.verbose, notify=lambda m: print(m, file=sys.stderr, flush=True)
        )
    except _build.KernelUnavailable as e:
        print(f"deltaMic: the fast kernel cannot be built here: {e.reason}", file=sys.stderr)
        if e.log:
            print(e.log, file=sys.stderr)
        return 1 if args.require else 0
    try:
        info = json.loads(plan.ok_marker.read_text())
    except (OSError, ValueError):
        info = {}
    omp = "OpenMP" if info.get("openmp") else "one thread (no OpenMP)"
    print(f"deltaMic kernel: {plan.library} ({mod.cpu_isa()} clone, {omp})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
