"""The ``deltamic`` command line: render, fit, track, batch and mechanics.

This module runs the commands: the arguments are parsed by the command-line format of
:mod:`deltamic_core.pipeline.command_line` (its option tables and ``job_from_args``), each
subcommand makes its pipeline call (a :class:`~deltamic_core.pipeline.FitJob` for fit, track
and batch) and prints the outcome, and :func:`main` turns every error into one line.

::

    deltamic render MESH --shape Z Y X --spacing Z Y X [--psf ...] [--noise poisson --photons N] --out image.tif
    deltamic fit IMAGE (--init MESH | --seeds seeds.csv | --labels L.tif) [fit options] --out DIR
    deltamic fit --target-mesh M.obj [--target-size UM] [fit options] --out DIR
    deltamic track STACK.tif (--init | --seeds | --labels ...) [fit options] --out DIR
    deltamic batch INPUTS... --out DIR [--scheduler ADDRESS | --workers N --threads-per-worker T] [fit options]
    deltamic mechanics MESH --out DIR [--tension A B VALUE ...]

Every problem with the input (a missing or unreadable file, wrong dimensions, a mesh outside
the image, a NaN image, a bad CSV, an unknown option, a non-positive spacing) ends the command
with one line ``deltamic: error: ...`` on stderr and a non-zero exit status, before anything is
written (``--debug`` shows the traceback instead). Outputs are assembled under a temporary name
and renamed into place at the end, so an output path either holds a complete result or nothing.

Frames and units: meshes are in micrometres in the image frame, columns (z, y, x), the centre of
voxel (i, j, k) at (i * sz, j * sy, k * sx); ``--mesh-units voxel`` reads mesh coordinates as
voxel indices instead. Cells are labelled 1..n in seed (or label, or mesh) order, 0 is outside.
"""

from __future__ import annotations

import sys
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path

from .pipeline import PipelineError, fit_to_directory, one_line
from .pipeline.command_line import PROG, CLIError, build_parser, count_init, job_from_args, psf_spec
from .pipeline.errors import EXIT_FAILURE, EXIT_USAGE


# ---------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 on success)."""
    own_process = argv is None  # the console script (not a caller's main([...])): see _settle_heap
    if own_process:
        _passive_threads()
    argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    debug = "--debug" in argv
    with warnings.catch_warnings():
        # every warning of this command once per place, as one line (also under a caller's own
        # warning filters, e.g. a test runner's)
        warnings.simplefilter("default")
        # a library's deprecation notice is addressed to developers, not to the user
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        if not debug:
            warnings.showwarning = _show_warning
        return _main(argv, debug, own_process)


def _passive_threads() -> None:
    """OpenMP threads that wait for work sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``
    unless the user set a policy; read when torch loads its OpenMP runtime, so before that):
    a fit runs hundreds of short parallel regions per step, and after each one the idle threads
    of the default policy spin, taking the cores from the working thread whenever the machine
    has other work. agg4-fine --fit-psf gaussian fit on 2 threads, concurrent runs at load
    11-15: 43.8 s CPU / 196 s wall (default) vs 18.3 s / 159 s (passive; 1 thread: 18.0 s /
    179 s)."""
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _settle_heap() -> None:
    """Python's cyclic garbage collector scans every live object at each full collection, the
    ~10^5 that importing torch and co. leaves included, and a fit makes many short-lived ones
    (a shared-membrane rebuild's per-collapse tuples and sets): freeze what the imports made
    (never scanned again) and collect young objects less often. Only in a process of its own
    (the console script): frozen objects are never freed. Measured on the benchmark's
    agg4-fine fit (1 thread): 0.65 -> 0.36 s of collector CPU per process."""
    import gc

    import torch  # noqa: F401 - the command imports it anyway: the bulk of the long-lived objects

    gc.collect()
    gc.freeze()
    gc.set_threshold(20000, 20, 20)


def _main(argv: list, debug: bool, own_process: bool = False) -> int:
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help / --version
            return int(exc.code or 0)
        if args.command is None:
            raise CLIError("a command is required: render, fit, track, batch or mechanics (see 'deltamic --help')")
        args.argv = [PROG] + argv
        if own_process:
            _settle_heap()
        handler = {
            "render": cmd_render,
            "fit": cmd_fit,
            "track": cmd_track,
            "batch": cmd_batch,
            "mechanics": cmd_mechanics,
        }[args.command]
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        _say_error("interrupted")
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place that turns errors into messages
        if debug:
            traceback.print_exc()
        _say_error(cli_terms(one_line(exc)))
        if isinstance(exc, PipelineError):
            return exc.code
        return EXIT_USAGE if isinstance(exc, (ValueError, TypeError, OSError)) else EXIT_FAILURE


def _show_warning(message, category, filename, lineno, file=None, line=None):
    # library warnings as one line each, in the command's voice (the source line is noise here)
    _warn(cli_terms(" ".join(str(message).split())))


#: library wording (keyword arguments) -> what a command-line user can change
_CLI_TERMS = (
    ("Lower FitConfig.lr or raise FitConfig.lambda_smooth", "lower --lr or raise --lambda-smooth"),
    ("FitConfig.lr", "--lr"),
    ("FitConfig.lambda_smooth", "--lambda-smooth"),
    ("FitConfig.iterations", "--iterations"),
    ("FitConfig.levels", "--levels"),
    ("FitConfig.device", "--device"),
    (
        "Crop the mesh, enlarge the image, or pass a larger margin_um",
        "the initial mesh is too large for the image: give smaller seed radii, a smaller --init mesh or a larger image",
    ),
    (
        "(raise max_oversampling or band_threshold)",
        "(the PSF is narrower than the voxels resolve: give a wider --sigma or a finer --spacing)",
    ),
    ("pass channel=<index or name>", "give --channel N"),
    ("channel=", "--channel "),
)


def cli_terms(msg: str) -> str:
    """Name command-line options instead of Python keyword arguments in a message."""
    for a, b in _CLI_TERMS:
        msg = msg.replace(a, b)
    return msg


def _say_error(msg: str) -> None:
    print(f"{PROG}: error: {msg}", file=sys.stderr, flush=True)


def _warn(msg: str) -> None:
    print(f"{PROG}: warning: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# subcommands
# ---------------------------------------------------------------------------------------------
def cmd_fit(args) -> int:
    if args.target_mesh is not None:
        return cmd_fit_target(args)
    if args.image is None:
        raise CLIError("fit needs an IMAGE (or --target-mesh MESH for the synthetic benchmark)")
    for opt, val in (("--target-size", args.target_size), ("--shape", args.shape)):
        if val is not None:
            raise CLIError(f"{opt} only applies with --target-mesh")
    if args.noise != "none":
        raise CLIError("--noise only applies with --target-mesh")
    if count_init(args) != 1:
        raise CLIError("fit needs exactly one of --init MESH, --seeds CSV, --labels TIF or --auto-seeds")
    _, report, _ = fit_to_directory(job_from_args(args))
    _print_fit_summary(report, args.out)
    return 0


def cmd_mechanics(args) -> int:
    from .pipeline.mechanics import mechanics_to_directory

    result, elapsed, out = mechanics_to_directory(
        args.mesh,
        args.out,
        spacing_um=args.spacing,
        mesh_units=args.mesh_units,
        tensions=args.tension,
        fix_tension=args.fix_tension,
        command=args.argv,
    )
    it = result.interfaces
    print(
        f"{len(it['cell_a'])} interface(s), {len(result.points['vertex'])} triple-line point(s), "
        f"force residual {result.residual_rms:.3g} ({elapsed:.1f} s)"
    )
    for i in range(len(it["cell_a"])):
        print(
            f"  interface {it['cell_a'][i]}-{it['cell_b'][i]}: tension {it['tension'][i]:.4g}, "
            f"mean curvature {it['mean_curvature_per_um'][i]:.4g} /um, delta p {it['delta_p'][i]:.4g}"
        )
    print(f"outputs in {out}")
    return 0


def _print_fit_summary(report: dict, out) -> None:
    t = report["timings"]
    fl = report["final_loss"]
    print(
        f"fitted {report['n_cells']} cell(s) in {report['iterations']} iterations "
        f"({t['fit_s']:.1f} s, final loss {fl:.4g})"
        if fl is not None
        else f"fitted {report['n_cells']} cell(s) ({t['fit_s']:.1f} s)"
    )
    for c in report["cells"]:
        print(
            f"  cell {c['cell']}: volume {c['volume_um3']:.4g} um^3, area {c['area_um2']:.4g} um^2, "
            f"sphericity {c['sphericity']:.3f}"
        )
    print(f"outputs in {out}")


def cmd_render(args) -> int:
    from .pipeline.synthetic import render_to_file

    done = render_to_file(
        args.mesh,
        args.out,
        **dict(shape=args.shape, spacing_um=args.spacing, psf=psf_spec(args), origin_um=args.origin),
        **dict(mesh_units=args.mesh_units, overwrite=args.overwrite, noise=args.noise, photons=args.photons),
        **dict(background=args.background, seed=args.seed, device=args.device, backend=args.backend),
        stain=args.stain,
    )
    print(
        f"rendered {done['n_faces']} triangles on {tuple(args.shape)} voxels with {done['psf']} "
        f"in {done['seconds']:.2f} s -> {done['out']}"
    )
    return 0


def cmd_fit_target(args) -> int:
    from .pipeline.synthetic import fit_target

    if args.image is not None:
        raise CLIError("give either IMAGE or --target-mesh, not both")
    if count_init(args):
        raise CLIError("--target-mesh starts from a sphere: drop --init/--seeds/--labels")
    if args.channel is not None or args.frame is not None:
        raise CLIError("--channel/--frame apply to an IMAGE, not to --target-mesh")
    _, report = fit_target(
        job_from_args(args),
        args.target_mesh,
        mesh_units=args.mesh_units,
        size_um=args.target_size,
        shape=args.shape,
        noise=args.noise,
        photons=args.photons,
        seed=args.seed,
    )
    d, tg = report["surface_distance"], report["target"]
    print(
        f"target {Path(args.target_mesh).name}: {tuple(tg['shape'])} voxels of {tuple(report['image']['spacing_um'])} um, "
        f"sphere r = {tg['sphere_radius_um']:.3g} um -> fitted in {report['iterations']} iterations "
        f"({report['timings']['fit_s']:.1f} s)"
    )
    print(
        f"surface distance: mean {d['mean_um']:.4g} um ({d['mean_voxels']:.3g} voxels), "
        f"Hausdorff {d['hausdorff_um']:.4g} um ({d['hausdorff_voxels']:.3g} voxels); "
        f"initial sphere: mean {d['initial_sphere']['mean_um']:.4g} um, Hausdorff {d['initial_sphere']['hausdorff_um']:.4g} um"
    )
    print(f"outputs in {args.out}")
    return 0


def cmd_track(args) -> int:
    from .pipeline.track import track_job

    if args.frame is not None:
        raise CLIError("track fits every frame: drop --frame")
    if count_init(args) != 1:
        raise CLIError("track needs exactly one of --init MESH, --seeds CSV or --labels TIF (for the first frame)")
    rows = track_job(job_from_args(args))
    n_t = len({r["t"] for r in rows})
    print(f"tracked {len({r['cell'] for r in rows})} cell(s) over {n_t} frame(s); outputs in {args.out}")
    return 0


def cmd_batch(args) -> int:
    from .pipeline.batch import format_summary, run_batch

    if args.frame is not None:
        raise CLIError("batch fits every time point of TZYX inputs: drop --frame")
    if count_init(args) != 1:
        raise CLIError(
            "batch needs exactly one of --init, --seeds or --labels ('{stem}' in the path is "
            "replaced by each input's name)"
        )
    if args.scheduler and args.workers:
        raise CLIError("give --scheduler ADDRESS or --workers N, not both")
    results = run_batch(
        args.inputs,
        args.out,
        job_from_args(args),
        scheduler=args.scheduler,
        n_workers=args.workers,
        threads_per_worker=args.threads_per_worker,
    )
    print(format_summary(results))
    return EXIT_FAILURE if any(r["status"] == "failed" for r in results) else 0


if __name__ == "__main__":  # python -m deltamic_core.cli
    sys.exit(main())
