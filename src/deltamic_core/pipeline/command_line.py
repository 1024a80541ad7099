"""The ``deltamic`` command-line format: the argument parser and parsed arguments -> jobs.

One table of options (``OPTIONS``, every option once) and one of subcommands (``COMMANDS``:
which options each takes, in order, with per-command help or required overrides) build the
parser; :func:`job_from_args` turns parsed ``fit``/``track``/``batch`` arguments into a
:class:`~deltamic_core.pipeline.FitJob` (:mod:`.cli_args` writes a FitJob back as a command
line). Used by :mod:`deltamic_core.cli` (which runs the commands and prints) and by the napari
plugin (settings from a saved command), so it lives below both.
"""

from __future__ import annotations

import argparse
import math

from .errors import InputError
from .inputs import InitSpec
from .job import FitJob
from .psfspec import PSFSpec, parse_zernike, psf_models

PROG = "deltamic"


class CLIError(InputError):
    """A problem with the command line itself (options that do not go together)."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing the usage block and exiting."""

    def error(self, message):
        raise CLIError(f"{message} (see '{self.prog} --help')")


# ---------------------------------------------------------------------------------------------
# argument parsing: one table of options, one table of subcommands
# ---------------------------------------------------------------------------------------------
def _number(convert, ok, must: str, expected: str, name: str):
    """An argparse type: ``convert(text)`` that satisfies ``ok`` (else "must be <must>")."""

    def parse(text: str):
        try:
            v = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"must be {must}, got {text}")
        return v

    parse.__name__ = name
    return parse


_positive_float = _number(
    float, lambda v: math.isfinite(v) and v > 0, "positive and finite", "a number", "_positive_float"
)
_finite_float = _number(float, math.isfinite, "finite", "a number", "_finite_float")
_positive_int = _number(int, lambda v: v > 0, "a positive integer", "an integer", "_positive_int")
_nonnegative_int = _number(int, lambda v: v >= 0, ">= 0", "an integer", "_nonnegative_int")
_ZYX = ("Z", "Y", "X")
_OVERWRITE_HELP = (
    "replace an earlier result at --out; only what deltamic itself wrote there (its manifest "
    "must match) is ever replaced, never other files"
)

#: every option, declared once: its argparse keywords (a subcommand may add or replace some)
_UM = dict(type=_positive_float, metavar="UM")
OPTIONS = {
    # PSF
    "--psf": dict(
        nargs="+",
        metavar="MODEL",
        default=["gaussian"],
        help="PSF model: gaussian (default), gibson-lanni (widefield), confocal, hanser, or measured BEAD.tif "
        "(a bead stack)",
    ),
    "--sigma": dict(_UM, nargs="+", help="Gaussian standard deviation(s) in um: one value or three (z y x)"),
    "--na": dict(type=_positive_float, help="numerical aperture"),
    "--wavelength": dict(_UM, help="emission wavelength in um"),
    "--ni": dict(type=_positive_float, help="refractive index of the immersion medium"),
    "--ns": dict(type=_positive_float, help="refractive index of the sample (gibson-lanni, confocal)"),
    "--ex-wavelength": dict(_UM, help="excitation wavelength in um (confocal)"),
    "--pinhole-au": dict(
        type=_positive_float, metavar="AU", help="pinhole diameter in Airy units (confocal; default 1)"
    ),
    "--depth": dict(_UM, type=_finite_float, help="depth of the focal plane below the coverslip in um (gibson-lanni)"),
    "--vectorial": dict(
        action="store_true",
        help="gibson-lanni: the vectorial model (an isotropic emitter through an aplanatic objective, as "
        "psfmodels' model='vectorial'; at NA >~ 0.8 wider than the scalar model)",
    ),
    "--zernike": dict(
        nargs="+",
        metavar="NOLL=COEFF",
        help="pupil aberrations for hanser, e.g. 11=0.1 (Noll index = coefficient in waves)",
    ),
    # initial meshes
    "--init": dict(metavar="MESH", help="initial mesh (.rec .obj .ply .stl .off .vtk)"),
    "--seeds": dict(metavar="CSV", help="seeds CSV with header z,y,x[,radius] in um (radius estimated when absent)"),
    "--labels": dict(metavar="TIF", help="label image to start from (0 = background; cell ids = labels)"),
    "--auto-seeds": dict(
        action="store_true",
        help="with --stain interior/both: one seed per bright object (maxima of the blurred image), radii estimated",
    ),
    # fitting
    "--learn-psf": dict(action="store_true", help="also fit the PSF parameters"),
    "--spacing": dict(type=_positive_float, nargs=3, metavar=_ZYX),
    "--channel": dict(type=_nonnegative_int, help="channel index of a multi-channel image"),
    "--frame": dict(type=_nonnegative_int, help="time point of a TZYX image to fit"),
    "--mesh-units": dict(choices=("um", "voxel")),
    "--iterations": dict(
        type=_positive_int,
        nargs="+",
        metavar="N",
        help="iterations at every resolution level, or one count per level in the order of --levels "
        "(default: the fitter's, 60 / 40 / 50 at factors 4 / 2 / 1, each level ending early once its "
        "loss stalls)",
    ),
    "--levels": dict(
        type=_positive_int,
        nargs="+",
        metavar="F",
        help="coarse-to-fine downsampling factors ending with 1 (default: 4 2 1)",
    ),
    "--loss": dict(choices=("mse", "poisson"), help="data term"),
    "--device": dict(default="cpu"),
    "--backend": dict(default="auto"),
    "--edge": dict(_UM, help="target mesh edge length in um (default: chosen by the fitter)"),
    "--lr": dict(_UM, help="step size of the vertex updates (default: the fitter's)"),
    "--lambda-smooth": dict(
        _UM,
        metavar="L",
        help="smoothness of the mesh updates (default: the fitter's; larger is smoother and more stable)",
    ),
    "--quiet": dict(action="store_true", help="no progress bar"),
    "--stain": dict(
        choices=("membrane", "interior", "both"),
        default="membrane",
        help="what is labelled: membranes (default), the interior of the objects (nuclei, cytoplasm, "
        "droplets) or both (membrane plus a cytoplasm level)",
    ),
    "--per-object": dict(
        action="store_true",
        help="with --stain interior/both: fit every object in its own crop, the light of its "
        "neighbours held fixed, then refit it at full resolution once all its neighbours are fitted "
        "(many nuclei: the cost grows with the objects, not with the field)",
    ),
    "--mechanics": dict(
        action="store_true",
        help="also write curvatures, contact angles, relative tensions and pressures of the fitted "
        "mesh (mechanics.csv, junctions.csv, curvature.csv)",
    ),
    # images of meshes (render, fit --target-mesh)
    "--shape": dict(type=_positive_int, nargs=3, metavar=_ZYX),
    "--origin": dict(
        type=_finite_float,
        nargs=3,
        metavar=_ZYX,
        default=(0.0, 0.0, 0.0),
        help="centre of voxel (0, 0, 0) in um (default 0 0 0)",
    ),
    "--noise": dict(choices=("none", "poisson"), default="none"),
    "--photons": dict(type=_positive_float, default=100.0),
    "--background": dict(type=float, default=0.0, help="background added to every voxel (photons)"),
    "--seed": dict(type=int, default=0),
    "--target-mesh": dict(
        metavar="MESH", help="render this mesh, fit it from a sphere and report the surface distance"
    ),
    "--target-size": dict(_UM, help="scale the target so its largest extent is this many um (default: as is)"),
    # batch cluster
    "--scheduler": dict(
        metavar="ADDRESS",
        help="address of a running dask scheduler. Trust boundary: tasks and results are exchanged with "
        "it as pickles, so whoever controls that scheduler (or its workers) can run code on this machine: "
        "use only a cluster you started yourself, preferably with dask's TLS security settings "
        "(tls:// address, distributed.comm.tls config). The default local cluster listens on 127.0.0.1 only.",
    ),
    "--workers": dict(type=_positive_int, help="local worker processes"),
    "--threads-per-worker": dict(type=_positive_int, default=1, help="torch threads per task (default 1)"),
    # mechanics
    "--fix-tension": dict(
        type=_nonnegative_int,
        nargs=2,
        metavar=("A", "B"),
        help="normalise the tensions so that the interface between regions A and B has tension 1 "
        "(default: mean tension 1)",
    ),
    "--tension": dict(
        nargs=3,
        action="append",
        metavar=("A", "B", "VALUE"),
        help="a measured tension of the interface A-B (any unit): sets the scale of the tensions "
        "and pressures; repeatable",
    ),
    # outputs
    "--out": dict(required=True, metavar="DIR"),
    "--overwrite": dict(action="store_true", help=_OVERWRITE_HELP),
    # accepted after the command too
    "--debug": dict(action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors"),
}


def _group(title, *entries, description=None):
    return ("group", title, description, entries)


_PSF = _group(
    "PSF (default: Gaussian, sigma = 1 voxel per axis)",
    "--psf --sigma --na --wavelength --ni --ns --ex-wavelength --pinhole-au --depth --vectorial --zernike",
)
_INIT = "--init --seeds --labels --auto-seeds"
_FITTING = _group(
    "fitting",
    "--learn-psf",
    ("--spacing", {"help": "voxel size in um (default: from the image metadata)"}),
    "--channel --frame",
    ("--mesh-units", {"help": "units of the --init mesh (default: um, voxel for .rec)"}),
    "--iterations --levels --loss",
    ("--device", {"help": "cpu or cuda (default: cpu)"}),
    ("--backend", {"help": "mesh Fourier transform backend (default: auto)"}),
    "--edge --lr --lambda-smooth --quiet --stain --per-object --mechanics",
)
_FIT_OPTIONS = (_group("initial meshes (one of)", _INIT), _PSF, _FITTING)
_BATCH_INIT = "in batch mode '{stem}' in these paths is replaced by each input's file name without extension"

#: the subcommands: name -> (help, description, arguments in order). An argument is a string of
#: OPTIONS names, (name, keywords added to or replacing its OPTIONS entry; a positional's
#: keywords) or a _group(title, arguments...).
COMMANDS = {
    "render": (
        "render the fluorescence image of a mesh",
        "Render the fluorescence image of a mesh (its membranes, its interior, or both) through a PSF model.",
        (
            ("mesh", {"metavar": "MESH"}),
            ("--shape", {"required": True}),
            ("--spacing", {"required": True, "help": "voxel size in um"}),
            "--origin --mesh-units --stain",
            _PSF,
            "--noise",
            ("--photons", {"help": "expected photon count at the brightest voxel (with --noise poisson)"}),
            "--background",
            ("--seed", {"help": "random seed of the noise"}),
            "--device --backend",
            ("--out", {"metavar": "IMAGE.tif"}),
            ("--overwrite", {"help": "replace an existing --out TIFF that deltamic wrote"}),
        ),
    ),
    "fit": (
        "fit meshes to an image",
        "Fit cell meshes to a 3D membrane image (or, with --target-mesh, to the rendered image of a known mesh).",
        (
            ("image", {"metavar": "IMAGE", "nargs": "?"}),
            *_FIT_OPTIONS,
            _group(
                "synthetic benchmark (instead of IMAGE)",
                "--target-mesh --target-size",
                ("--shape", {"help": "image shape (default: the mesh plus a margin)"}),
                "--noise --photons --seed",
            ),
            "--out --overwrite",
        ),
    ),
    "track": (
        "fit every frame of a time-lapse",
        "Fit a TZYX stack frame by frame: the mesh fitted at t starts t+1.",
        (("image", {"metavar": "STACK"}), *_FIT_OPTIONS, "--out --overwrite"),
    ),
    "batch": (
        "fit many images on a dask cluster",
        "Fit many images (and every time point of TZYX stacks) as dask tasks. Finished items "
        "(DIR/<item>/report.json) are skipped on a rerun; a failing item is recorded in "
        "DIR/<item>/error.txt and does not stop the batch.",
        (
            ("inputs", {"metavar": "INPUT", "nargs": "+"}),
            "--out",
            _group("cluster", "--scheduler --workers --threads-per-worker"),
            _group("initial meshes (one of)", _INIT, description=_BATCH_INIT),
            *_FIT_OPTIONS[1:],
        ),
    ),
    "mechanics": (
        "curvatures, contact angles, tensions and pressures of a multi-cell mesh",
        "Per-vertex mean and Gaussian curvature of every interface, contact angles on the triple "
        "lines, relative surface tensions (Young-Dupre force balance) and pressures (Laplace) of a "
        "labelled mesh, written to DIR (mechanics.csv, junctions.csv, curvature.csv, mesh.ply with "
        "curvature vertex properties, report.json).",
        (
            ("mesh", {"metavar": "MESH"}),
            "--out",
            ("--spacing", {"help": "voxel size in um for meshes in voxel units (.rec: default from the file, else 1)"}),
            ("--mesh-units", {"help": "units of MESH"}),
            "--fix-tension --tension",
        ),
    ),
}


def _add_arguments(parser, entries) -> None:
    for entry in entries:
        if isinstance(entry, str):
            for name in entry.split():
                parser.add_argument(name, **OPTIONS[name])
        elif entry[0] == "group":
            _, title, description, members = entry
            _add_arguments(parser.add_argument_group(title, description), members)
        else:
            name, extra = entry
            parser.add_argument(name, **{**OPTIONS.get(name, {}), **extra})


def build_parser() -> argparse.ArgumentParser:
    from .._version import __version__

    parser = _Parser(
        prog=PROG,
        description="Cell segmentation in 3D fluorescence microscopy by "
        "differentiable inverse rendering of triangle meshes.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (help_text, description, entries) in COMMANDS.items():
        _add_arguments(sub.add_parser(name, help=help_text, description=description), (*entries, "--debug"))
    return parser


# ---------------------------------------------------------------------------------------------
# arguments -> FitJob
# ---------------------------------------------------------------------------------------------
def count_init(args) -> int:
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
        "vectorial": True if getattr(args, "vectorial", False) else None,
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


def _iterations(counts):
    """``--iterations``: one count for every level (an int) or one per level (a tuple)."""
    if not counts:
        return None
    return int(counts[0]) if len(counts) == 1 else tuple(int(c) for c in counts)


def job_from_args(args) -> FitJob:
    """The FitJob of a parsed ``fit``/``track``/``batch`` command line."""
    return FitJob(
        image=getattr(args, "image", None),
        spacing_um=tuple(args.spacing) if args.spacing else None,
        channel=args.channel,
        frame=args.frame,
        init=init_spec(args),
        psf=psf_spec(args),
        iterations=_iterations(args.iterations),
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
        per_object=bool(getattr(args, "per_object", False)),
    )
