"""The ``deltamic`` command line: render, fit, track and batch.

::

    deltamic render MESH --shape Z Y X --spacing Z Y X [--psf ...] [--noise poisson --photons N] --out image.tif
    deltamic fit IMAGE (--init MESH | --seeds seeds.csv | --labels L.tif) [fit options] --out DIR
    deltamic fit --target-mesh M.obj [--target-size UM] [fit options] --out DIR
    deltamic track STACK.tif (--init | --seeds | --labels ...) [fit options] --out DIR
    deltamic batch INPUTS... --out DIR [--scheduler ADDRESS | --workers N --threads-per-worker T] [fit options]

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

import argparse
import math
import sys
import time
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .pipeline import (
    FitJob,
    InitSpec,
    InputError,
    PipelineError,
    PSFSpec,
    check_device,
    check_inside,
    fit_to_directory,
    make_psf,
    one_line,
    parse_zernike,
    read_mesh_file,
    render_mesh_image,
)
from .pipeline.errors import EXIT_FAILURE, EXIT_USAGE
from .pipeline.psfspec import psf_models

PROG = "deltamic"


class CLIError(InputError):
    """A problem with the command line itself (options that do not go together)."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing the usage block and exiting."""

    def error(self, message):
        raise CLIError(f"{message} (see '{self.prog} --help')")


# ---------------------------------------------------------------------------------------------
# argument parsing
# ---------------------------------------------------------------------------------------------
def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"must be positive and finite, got {text}")
    return v


def _finite_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be finite, got {text}")
    return v


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return v


def _nonnegative_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return v


def _add_psf_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("PSF (default: Gaussian, sigma = 1 voxel per axis)")
    g.add_argument(
        "--psf",
        nargs="+",
        metavar="MODEL",
        default=["gaussian"],
        help="PSF model: gaussian (default), gibson-lanni (widefield), confocal, hanser, or measured BEAD.tif "
        "(a bead stack)",
    )
    g.add_argument(
        "--sigma",
        type=_positive_float,
        nargs="+",
        metavar="UM",
        help="Gaussian standard deviation(s) in um: one value or three (z y x)",
    )
    g.add_argument("--na", type=_positive_float, help="numerical aperture")
    g.add_argument("--wavelength", type=_positive_float, metavar="UM", help="emission wavelength in um")
    g.add_argument("--ni", type=_positive_float, help="refractive index of the immersion medium")
    g.add_argument("--ns", type=_positive_float, help="refractive index of the sample (gibson-lanni, confocal)")
    g.add_argument("--ex-wavelength", type=_positive_float, metavar="UM", help="excitation wavelength in um (confocal)")
    g.add_argument(
        "--pinhole-au", type=_positive_float, metavar="AU", help="pinhole diameter in Airy units (confocal; default 1)"
    )
    g.add_argument(
        "--depth",
        type=_finite_float,
        default=None,
        metavar="UM",
        help="depth of the focal plane below the coverslip in um (gibson-lanni)",
    )
    g.add_argument(
        "--zernike",
        nargs="+",
        metavar="NOLL=COEFF",
        default=None,
        help="pupil aberrations for hanser, e.g. 11=0.1 (Noll index = coefficient in waves)",
    )


def _add_fit_options(p: argparse.ArgumentParser, *, batch: bool = False) -> None:
    init = p.add_argument_group("initial meshes (one of)")
    init.add_argument("--init", metavar="MESH", help="initial mesh (.rec .obj .ply .stl .off .vtk)")
    init.add_argument(
        "--seeds", metavar="CSV", help="seeds CSV with header z,y,x[,radius] in um (radius estimated when absent)"
    )
    init.add_argument("--labels", metavar="TIF", help="label image to start from (0 = background; cell ids = labels)")
    init.add_argument(
        "--auto-seeds",
        action="store_true",
        help="with --stain interior/both: one seed per bright object (maxima of the blurred image), radii estimated",
    )
    if batch:
        init.description = (
            "in batch mode '{stem}' in these paths is replaced by each input's file name without extension"
        )
    _add_psf_options(p)
    g = p.add_argument_group("fitting")
    g.add_argument("--learn-psf", action="store_true", help="also fit the PSF parameters")
    g.add_argument(
        "--spacing",
        type=_positive_float,
        nargs=3,
        metavar=("Z", "Y", "X"),
        help="voxel size in um (default: from the image metadata)",
    )
    g.add_argument("--channel", type=_nonnegative_int, help="channel index of a multi-channel image")
    g.add_argument("--frame", type=_nonnegative_int, help="time point of a TZYX image to fit")
    g.add_argument(
        "--mesh-units",
        choices=("um", "voxel"),
        default=None,
        help="units of the --init mesh (default: um, voxel for .rec)",
    )
    g.add_argument(
        "--iterations",
        type=_positive_int,
        default=None,
        help="iterations per resolution level (default: the fitter's, 80 / 120 / 10 at factors 4 / 2 / 1)",
    )
    g.add_argument(
        "--levels",
        type=_positive_int,
        nargs="+",
        default=None,
        metavar="F",
        help="coarse-to-fine downsampling factors ending with 1 (default: 4 2 1)",
    )
    g.add_argument("--loss", choices=("mse", "poisson"), default=None, help="data term")
    g.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    g.add_argument("--backend", default="auto", help="mesh Fourier transform backend (default: auto)")
    g.add_argument(
        "--edge",
        type=_positive_float,
        default=None,
        metavar="UM",
        help="target mesh edge length in um (default: chosen by the fitter)",
    )
    g.add_argument(
        "--lr",
        type=_positive_float,
        default=None,
        metavar="UM",
        help="step size of the vertex updates (default: the fitter's)",
    )
    g.add_argument(
        "--lambda-smooth",
        type=_positive_float,
        default=None,
        metavar="L",
        help="smoothness of the mesh updates (default: the fitter's; larger is smoother and more stable)",
    )
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument(
        "--stain",
        choices=("membrane", "interior", "both"),
        default="membrane",
        help="what is labelled: membranes (default), the interior of the objects (nuclei, cytoplasm, "
        "droplets) or both (membrane plus a cytoplasm level)",
    )
    g.add_argument(
        "--mechanics",
        action="store_true",
        help="also write curvatures, contact angles, relative tensions and pressures of the fitted "
        "mesh (mechanics.csv, junctions.csv, curvature.csv)",
    )


_OVERWRITE_HELP = (
    "replace an earlier result at --out; only what deltamic itself wrote there (its manifest "
    "must match) is ever replaced, never other files"
)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(
        prog=PROG,
        description="Cell segmentation in 3D fluorescence microscopy by "
        "differentiable inverse rendering of triangle meshes.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    r = sub.add_parser(
        "render",
        help="render the fluorescence image of a mesh",
        description="Render the membrane image of a mesh through a PSF model.",
    )
    r.add_argument("mesh", metavar="MESH")
    r.add_argument("--shape", type=_positive_int, nargs=3, metavar=("Z", "Y", "X"), required=True)
    r.add_argument(
        "--spacing", type=_positive_float, nargs=3, metavar=("Z", "Y", "X"), required=True, help="voxel size in um"
    )
    r.add_argument(
        "--origin",
        type=_finite_float,
        nargs=3,
        metavar=("Z", "Y", "X"),
        default=(0.0, 0.0, 0.0),
        help="centre of voxel (0, 0, 0) in um (default 0 0 0)",
    )
    r.add_argument("--mesh-units", choices=("um", "voxel"), default=None)
    _add_psf_options(r)
    r.add_argument("--noise", choices=("none", "poisson"), default="none")
    r.add_argument(
        "--photons",
        type=_positive_float,
        default=100.0,
        help="expected photon count at the brightest voxel (with --noise poisson)",
    )
    r.add_argument("--background", type=float, default=0.0, help="background added to every voxel (photons)")
    r.add_argument("--seed", type=int, default=0, help="random seed of the noise")
    r.add_argument("--device", default="cpu")
    r.add_argument("--backend", default="auto")
    r.add_argument("--out", required=True, metavar="IMAGE.tif")
    r.add_argument("--overwrite", action="store_true", help="replace an existing --out TIFF that deltamic wrote")

    f = sub.add_parser(
        "fit",
        help="fit meshes to an image",
        description="Fit cell meshes to a 3D membrane image (or, with --target-mesh, "
        "to the rendered image of a known mesh).",
    )
    f.add_argument("image", metavar="IMAGE", nargs="?")
    _add_fit_options(f)
    t = f.add_argument_group("synthetic benchmark (instead of IMAGE)")
    t.add_argument(
        "--target-mesh", metavar="MESH", help="render this mesh, fit it from a sphere and report the surface distance"
    )
    t.add_argument(
        "--target-size",
        type=_positive_float,
        default=None,
        metavar="UM",
        help="scale the target so its largest extent is this many um (default: as is)",
    )
    t.add_argument(
        "--shape",
        type=_positive_int,
        nargs=3,
        metavar=("Z", "Y", "X"),
        help="image shape (default: the mesh plus a margin)",
    )
    t.add_argument("--noise", choices=("none", "poisson"), default="none")
    t.add_argument("--photons", type=_positive_float, default=100.0)
    t.add_argument("--seed", type=int, default=0)
    f.add_argument("--out", required=True, metavar="DIR")
    f.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)

    tr = sub.add_parser(
        "track",
        help="fit every frame of a time-lapse",
        description="Fit a TZYX stack frame by frame: the mesh fitted at t starts t+1.",
    )
    tr.add_argument("image", metavar="STACK")
    _add_fit_options(tr)
    tr.add_argument("--out", required=True, metavar="DIR")
    tr.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)

    b = sub.add_parser(
        "batch",
        help="fit many images on a dask cluster",
        description="Fit many images (and every time point of TZYX stacks) as dask "
        "tasks. Finished items (DIR/<item>/report.json) are skipped on a rerun; a "
        "failing item is recorded in DIR/<item>/error.txt and does not stop the batch.",
    )
    b.add_argument("inputs", metavar="INPUT", nargs="+")
    b.add_argument("--out", required=True, metavar="DIR")
    c = b.add_argument_group("cluster")
    c.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="address of a running dask scheduler. Trust boundary: tasks and results are exchanged with "
        "it as pickles, so whoever controls that scheduler (or its workers) can run code on this machine: "
        "use only a cluster you started yourself, preferably with dask's TLS security settings "
        "(tls:// address, distributed.comm.tls config). The default local cluster listens on 127.0.0.1 only.",
    )
    c.add_argument("--workers", type=_positive_int, default=None, help="local worker processes")
    c.add_argument("--threads-per-worker", type=_positive_int, default=1, help="torch threads per task (default 1)")
    _add_fit_options(b, batch=True)
    m = sub.add_parser(
        "mechanics",
        help="curvatures, contact angles, tensions and pressures of a multi-cell mesh",
        description="Per-vertex mean and Gaussian curvature of every interface, contact angles on "
        "the triple lines, relative surface tensions (Young-Dupre force balance) and pressures "
        "(Laplace) of a labelled mesh, written to DIR (mechanics.csv, junctions.csv, "
        "curvature.csv, mesh.ply with curvature vertex properties, report.json).",
    )
    m.add_argument("mesh", metavar="MESH")
    m.add_argument("--out", required=True, metavar="DIR")
    m.add_argument(
        "--spacing",
        type=_positive_float,
        nargs=3,
        metavar=("Z", "Y", "X"),
        help="voxel size in um for meshes in voxel units (.rec: default from the file, else 1)",
    )
    m.add_argument("--mesh-units", choices=("um", "voxel"), default=None, help="units of MESH")
    m.add_argument(
        "--fix-tension",
        type=_nonnegative_int,
        nargs=2,
        metavar=("A", "B"),
        help="normalise the tensions so that the interface between regions A and B has tension 1 "
        "(default: mean tension 1)",
    )
    m.add_argument(
        "--tension",
        nargs=3,
        action="append",
        metavar=("A", "B", "VALUE"),
        help="a measured tension of the interface A-B (any unit): sets the scale of the tensions "
        "and pressures; repeatable",
    )
    for sp in (r, f, tr, b, m):  # accepted after the command too
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors")
    return parser


# ---------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 on success)."""
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
        return _main(argv, debug)


def _main(argv: list, debug: bool) -> int:
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help / --version
            return int(exc.code or 0)
        if args.command is None:
            raise CLIError("a command is required: render, fit, track, batch or mechanics (see 'deltamic --help')")
        args.argv = [PROG] + argv
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
# arguments -> FitJob
# ---------------------------------------------------------------------------------------------
def _count_init(args) -> int:
    auto = True if getattr(args, "auto_seeds", False) else None
    return sum(v is not None for v in (args.init, args.seeds, args.labels, auto))


def init_spec(args) -> InitSpec | None:
    """The --init/--seeds/--labels option as an InitSpec (None when none is given)."""
    if args.seeds is not None:
        return InitSpec("seeds", args.seeds)
    if args.labels is not None:
        return InitSpec("labels", args.labels)
    if args.init is not None:
        return InitSpec("mesh", args.init, mesh_units=args.mesh_units)
    if getattr(args, "auto_seeds", False):
        return InitSpec("auto")
    return None


def psf_spec(args) -> PSFSpec:
    """The PSF options as a PSFSpec (parameters that were not given are left out)."""
    params = {
        "sigma_um": tuple(args.sigma) if args.sigma is not None else None,
        "na": args.na,
        "wavelength_um": args.wavelength,
        "n_immersion": args.ni,
        "n_sample": args.ns,
        "depth_um": args.depth,
        "zernike": parse_zernike(args.zernike) if args.zernike else None,
        "ex_wavelength_um": getattr(args, "ex_wavelength", None),
        "pinhole_au": getattr(args, "pinhole_au", None),
    }
    model, *rest = args.psf if isinstance(args.psf, (list, tuple)) else [args.psf]
    models = psf_models()
    if model not in models:
        raise CLIError(f"--psf {model}: unknown PSF model; choose from {', '.join(models)}")
    if model == "measured":
        if len(rest) != 1:
            raise CLIError("--psf measured takes the bead image: --psf measured BEAD.tif")
        params["bead"] = rest[0]
    elif rest:
        raise CLIError(f"--psf {model} takes no file (got {' '.join(rest)}); only --psf measured BEAD.tif does")
    return PSFSpec(
        model, {k: v for k, v in params.items() if v is not None}, learn=bool(getattr(args, "learn_psf", False))
    )


def job_from_args(args) -> FitJob:
    """The FitJob of a parsed ``fit``/``track``/``batch`` command line."""
    return FitJob(
        image=getattr(args, "image", None),
        spacing_um=tuple(args.spacing) if args.spacing else None,
        channel=args.channel,
        frame=args.frame,
        init=init_spec(args),
        psf=psf_spec(args),
        iterations=args.iterations,
        levels=tuple(args.levels) if args.levels else None,
        loss=args.loss,
        edge_um=args.edge,
        lr=getattr(args, "lr", None),
        lambda_smooth=getattr(args, "lambda_smooth", None),
        device=args.device,
        backend=args.backend,
        out=args.out,
        overwrite=bool(getattr(args, "overwrite", False)),
        command=getattr(args, "argv", None),
        progress=not args.quiet,
        mechanics=bool(getattr(args, "mechanics", False)),
        stain=getattr(args, "stain", "membrane"),
    )


def _check_psf_options(args) -> None:
    """Fail now on PSF options that every image would reject (the spacing does not matter)."""
    make_psf(psf_spec(args), (1.0, 1.0, 1.0))


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
    if _count_init(args) != 1:
        raise CLIError("fit needs exactly one of --init MESH, --seeds CSV, --labels TIF or --auto-seeds")
    _, report, _ = fit_to_directory(job_from_args(args))
    _print_fit_summary(report, args.out)
    return 0


def cmd_mechanics(args) -> int:
    from . import io as dio
    from .geometry.mechanics import mechanics
    from .pipeline.outputs import (
        REPORT_NAME,
        check_replaceable,
        staged_directory,
        versions,
        write_json,
        write_mechanics_outputs,
    )

    out = check_replaceable(args.out)
    if args.spacing is not None or args.mesh_units is not None:
        mesh = read_mesh_file(args.mesh, tuple(args.spacing or (1.0, 1.0, 1.0)), args.mesh_units, what="MESH")
    else:
        mesh = (
            read_mesh_file(args.mesh, None, "um", what="MESH")
            if not str(args.mesh).lower().endswith(".rec")
            else _read_rec_as_is(dio, args.mesh)
        )
    known = {}
    for a, b, value in args.tension or ():
        try:
            known[(int(a), int(b))] = float(value)
        except ValueError:
            raise CLIError(f"--tension {a} {b} {value}: expected two region labels and a number") from None
    normalise = "mean" if args.fix_tension is None else tuple(args.fix_tension)
    try:
        t0 = time.perf_counter()
        result = mechanics(mesh, normalise=normalise, known_tensions=known or None)
        elapsed = time.perf_counter() - t0
    except ValueError as exc:
        raise InputError(f"MESH {str(args.mesh)!r}: {one_line(exc)}") from None
    with staged_directory(out) as tmp:
        summary = write_mechanics_outputs(tmp, mesh, result)
        write_json(
            tmp / REPORT_NAME,
            {
                "command": args.argv,
                "input": str(args.mesh),
                "mechanics": summary,
                "time_s": elapsed,
                "versions": versions(),
            },
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


def _read_rec_as_is(dio, path):
    from .pipeline.inputs import _check_mesh, _existing_file

    p = _existing_file(path, "MESH")
    try:
        mesh = dio.read_mesh(p)
    except Exception as exc:  # noqa: BLE001 - any reader failure means "unreadable"
        raise InputError(f"MESH {str(p)!r} cannot be read as a mesh ({one_line(exc)})") from None
    _check_mesh(mesh, f"MESH {str(p)!r}")
    return mesh


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


def _check_out_file(path, *, overwrite=False, inputs=(), suffixes=(".tif", ".tiff"), what="--out") -> Path:
    from .io.outdir import OutputError, check_output_file

    try:
        return check_output_file(path, overwrite=overwrite, inputs=inputs, option=what, suffixes=suffixes)
    except OutputError as exc:
        raise CLIError(str(exc)) from None


def cmd_render(args) -> int:
    from . import io as dio
    from ._checks import check_spacing

    out = _check_out_file(args.out, overwrite=args.overwrite, inputs=[args.mesh])
    spacing = check_spacing(args.spacing, "--spacing")
    check_device(args.device, args.backend)
    if args.background < 0 or not math.isfinite(args.background):
        raise CLIError(f"--background must be >= 0, got {args.background}")
    mesh = read_mesh_file(args.mesh, spacing, args.mesh_units, what="MESH")
    check_inside(mesh.verts.min(0), mesh.verts.max(0), args.shape, spacing, args.origin, what=f"MESH {args.mesh!r}")
    from .geometry.validate import total_area

    if not total_area(mesh) > 0:
        raise CLIError(f"MESH {args.mesh!r} has no area (all its triangles are degenerate): the image would be empty")
    psf = make_psf(psf_spec(args), spacing)
    from .pipeline.run import check_psf_resolved

    check_psf_resolved(psf, spacing)
    t0 = time.perf_counter()
    img = render_mesh_image(
        mesh,
        args.shape,
        spacing,
        psf,
        args.origin,
        noise=args.noise,
        photons=args.photons,
        background=args.background,
        seed=args.seed,
        device=args.device,
        backend=args.backend,
    )
    if not (np.all(np.isfinite(img)) and float(img.max()) > 0):
        raise CLIError(f"the rendered image of MESH {args.mesh!r} is empty (is the mesh inside --shape, --origin?)")
    dio.write_tiff(out, img, spacing)
    print(
        f"rendered {len(mesh.faces)} triangles on {tuple(args.shape)} voxels with {psf.describe()} "
        f"in {time.perf_counter() - t0:.2f} s -> {out}"
    )
    return 0


def cmd_fit_target(args) -> int:
    from .pipeline.synthetic import fit_target

    if args.image is not None:
        raise CLIError("give either IMAGE or --target-mesh, not both")
    if _count_init(args):
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
    if _count_init(args) != 1:
        raise CLIError("track needs exactly one of --init MESH, --seeds CSV or --labels TIF (for the first frame)")
    rows = track_job(job_from_args(args))
    n_t = len({r["t"] for r in rows})
    print(f"tracked {len({r['cell'] for r in rows})} cell(s) over {n_t} frame(s); outputs in {args.out}")
    return 0


def cmd_batch(args) -> int:
    from .pipeline.batch import expand_items, fit_item, format_summary, run_tasks

    if args.frame is not None:
        raise CLIError("batch fits every time point of TZYX inputs: drop --frame")
    if _count_init(args) != 1:
        raise CLIError(
            "batch needs exactly one of --init, --seeds or --labels ('{stem}' in the path is "
            "replaced by each input's name)"
        )
    if args.scheduler and args.workers:
        raise CLIError("give --scheduler ADDRESS or --workers N, not both")
    from .pipeline.outputs import check_replaceable

    out = Path(args.out)
    check_replaceable(out, resume=True, inputs=list(args.inputs))  # before any cluster starts
    check_device(args.device, args.backend)
    job = job_from_args(args).replace(image=None, out=None, progress=False)
    _check_psf_options(args)
    job.fit_config()
    try:
        items = expand_items(args.inputs)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    print(f"batch: {len(items)} item(s) from {len(args.inputs)} input(s) -> {out}")
    results = run_tasks(
        fit_item,
        items,
        out,
        kwargs={"job": job},
        scheduler=args.scheduler,
        n_workers=args.workers,
        threads_per_worker=args.threads_per_worker,
    )
    print(format_summary(results))
    return EXIT_FAILURE if any(r["status"] == "failed" for r in results) else 0


if __name__ == "__main__":  # python -m deltamic_core.cli
    sys.exit(main())
