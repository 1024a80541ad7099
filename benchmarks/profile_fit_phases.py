"""CPU seconds per phase of one whole `deltamic fit` command (issue 12, goal 1: the fixed
costs around the steps).

Usage: the arguments of ``deltamic fit``, e.g. (1 thread, nice; note the load beside the
figures)::

    OMP_NUM_THREADS=1 PYTHONPATH=src nice python benchmarks/profile_fit_phases.py fit IMAGE \\
        --seeds SEEDS.csv --spacing 0.5 0.25 0.25 --psf gaussian --sigma 0.264 0.102 0.102 \\
        --learn-psf --out OUT --quiet --overwrite

Each phase is the process CPU time (``time.process_time``: every thread) spent inside one
function, wrapped for the run; nested phases are indented and included in their parents.
"steps (all)" includes the level changes (``build_level``) and the rebuild half-way through
the full-resolution level; ``share_membranes`` is every membrane rebuild.
"""

from __future__ import annotations

import collections
import importlib
import sys
import time

T0 = time.process_time()
SECONDS: dict[str, float] = collections.defaultdict(float)
CALLS: collections.Counter = collections.Counter()

PHASES = [  # (module, attribute path, label)
    ("deltamic_core.pipeline.run", "prepare", "prepare (inputs, initial mesh)"),
    ("deltamic_core.pipeline.run", "run_fit", "run_fit"),
    ("deltamic_core.fit.fitter", "Fitter.step", "  steps (all)"),
    ("deltamic_core.fit.fitter", "Fitter._build_level", "    build_level (incl. rebuild)"),
    ("deltamic_core.fit.fitter", "Fitter._share_membranes", "    share_membranes (every rebuild)"),
    ("deltamic_core.geometry", "contact_labels_by_gap", "      contact_labels_by_gap"),
    ("deltamic_core.geometry.seed", "surface_nets", "      surface_nets"),
    ("deltamic_core.geometry.remesh", "orient_outward", "      orient_outward"),
    ("deltamic_core.geometry.remesh", "_resample_junctions", "      resample_junctions"),
    ("deltamic_core.geometry.remesh", "_remesh_patch", "      remesh_patch (gpytoolbox botsch)"),
    ("deltamic_core.geometry.remesh", "_relieve_junction_fans", "      relieve_junction_fans"),
    ("deltamic_core.geometry", "snap_to_cells", "      snap_to_cells"),
    ("deltamic_core.fit.fitter", "Fitter._set_topology", "    set_topology"),
    ("deltamic_core.pipeline.run", "fit_and_write", "fit_and_write (fit + outputs)"),
]


def _wrap(module: str, path: str, label: str) -> None:
    owner = importlib.import_module(module)
    *parents, name = path.split(".")
    for p in parents:
        owner = getattr(owner, p)
    inner = getattr(owner, name)

    def timed(*args, **kwargs):
        t = time.process_time()
        try:
            return inner(*args, **kwargs)
        finally:
            SECONDS[label] += time.process_time() - t
            CALLS[label] += 1

    setattr(owner, name, timed)


def main() -> None:
    from deltamic_core import cli

    t_import = time.process_time() - T0
    import deltamic_core.geometry  # noqa: F401 - the submodules the table wraps

    for module, path, label in PHASES:
        _wrap(module, path, label)
    try:
        cli.main()
    except SystemExit:
        pass
    finally:
        total = time.process_time() - T0
        print(f"{'imports (cli module)':40s}      {t_import:7.2f} s", file=sys.stderr)
        for _, _, label in PHASES:
            if CALLS[label]:
                print(f"{label:40s} {CALLS[label]:4d}x {SECONDS[label]:7.2f} s", file=sys.stderr)
        print(f"{'whole process':40s}      {total:7.2f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
