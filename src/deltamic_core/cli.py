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
import csv
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Sequence

import numpy as np

PROG = "deltamic"
EXIT_USAGE = 2  # bad command line or bad input
EXIT_FAILURE = 1  # a run that failed for another reason


class CLIError(Exception):
    """A problem the user can fix; printed as one line, never with a traceback."""

    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing the usage block and exiting."""

    def error(self, message):  # noqa: D401 - argparse API
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
    g.add_argument("--psf", choices=("gaussian", "gibson-lanni", "hanser"), default="gaussian",
                   help="PSF model (default: gaussian)")
    g.add_argument("--sigma", type=_positive_float, nargs="+", metavar="UM",
                   help="Gaussian standard deviation(s) in um: one value or three (z y x)")
    g.add_argument("--na", type=_positive_float, help="numerical aperture")
    g.add_argument("--wavelength", type=_positive_float, metavar="UM", help="emission wavelength in um")
    g.add_argument("--ni", type=_positive_float, help="refractive index of the immersion medium")
    g.add_argument("--ns", type=_positive_float, help="refractive index of the sample (gibson-lanni)")
    g.add_argument("--depth", type=_finite_float, default=None, metavar="UM",
                   help="depth of the focal plane below the coverslip in um (gibson-lanni)")
    g.add_argument("--zernike", nargs="+", metavar="NOLL=COEFF", default=None,
                   help="pupil aberrations for hanser, e.g. 11=0.1 (Noll index = coefficient in waves)")


def _add_fit_options(p: argparse.ArgumentParser, *, batch: bool = False) -> None:
    init = p.add_argument_group("initial meshes (one of)")
    init.add_argument("--init", metavar="MESH", help="initial mesh (.rec .obj .ply .stl .off .vtk)")
    init.add_argument("--seeds", metavar="CSV",
                      help="seeds CSV with header z,y,x[,radius] in um (radius estimated when absent)")
    init.add_argument("--labels", metavar="TIF", help="label image to start from (0 = background; cell ids = labels)")
    if batch:
        init.description = ("in batch mode '{stem}' in these paths is replaced by each input's file "
                            "name without extension")
    _add_psf_options(p)
    g = p.add_argument_group("fitting")
    g.add_argument("--learn-psf", action="store_true", help="also fit the PSF parameters")
    g.add_argument("--spacing", type=_positive_float, nargs=3, metavar=("Z", "Y", "X"),
                   help="voxel size in um (default: from the image metadata)")
    g.add_argument("--channel", type=_nonnegative_int, help="channel index of a multi-channel image")
    g.add_argument("--frame", type=_nonnegative_int, help="time point of a TZYX image to fit")
    g.add_argument("--mesh-units", choices=("um", "voxel"), default=None,
                   help="units of the --init mesh (default: um, voxel for .rec)")
    g.add_argument("--iterations", type=_positive_int, default=None,
                   help="iterations per resolution level (default: the fitter's, 80 / 120 / 10 at factors 4 / 2 / 1)")
    g.add_argument("--levels", type=_positive_int, nargs="+", default=None, metavar="F",
                   help="coarse-to-fine downsampling factors ending with 1 (default: 4 2 1)")
    g.add_argument("--loss", choices=("mse", "poisson"), default=None, help="data term")
    g.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    g.add_argument("--backend", default="auto", help="mesh Fourier transform backend (default: auto)")
    g.add_argument("--edge", type=_positive_float, default=None, metavar="UM",
                   help="target mesh edge length in um (default: chosen by the fitter)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog=PROG, description="Cell segmentation in 3D fluorescence microscopy by "
                     "differentiable inverse rendering of triangle meshes.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    r = sub.add_parser("render", help="render the fluorescence image of a mesh",
                       description="Render the membrane image of a mesh through a PSF model.")
    r.add_argument("mesh", metavar="MESH")
    r.add_argument("--shape", type=_positive_int, nargs=3, metavar=("Z", "Y", "X"), required=True)
    r.add_argument("--spacing", type=_positive_float, nargs=3, metavar=("Z", "Y", "X"), required=True,
                   help="voxel size in um")
    r.add_argument("--origin", type=_finite_float, nargs=3, metavar=("Z", "Y", "X"), default=(0.0, 0.0, 0.0),
                   help="centre of voxel (0, 0, 0) in um (default 0 0 0)")
    r.add_argument("--mesh-units", choices=("um", "voxel"), default=None)
    _add_psf_options(r)
    r.add_argument("--noise", choices=("none", "poisson"), default="none")
    r.add_argument("--photons", type=_positive_float, default=100.0,
                   help="expected photon count at the brightest voxel (with --noise poisson)")
    r.add_argument("--background", type=float, default=0.0, help="background added to every voxel (photons)")
    r.add_argument("--seed", type=int, default=0, help="random seed of the noise")
    r.add_argument("--device", default="cpu")
    r.add_argument("--backend", default="auto")
    r.add_argument("--out", required=True, metavar="IMAGE.tif")

    f = sub.add_parser("fit", help="fit meshes to an image",
                       description="Fit cell meshes to a 3D membrane image (or, with --target-mesh, "
                       "to the rendered image of a known mesh).")
    f.add_argument("image", metavar="IMAGE", nargs="?")
    _add_fit_options(f)
    t = f.add_argument_group("synthetic benchmark (instead of IMAGE)")
    t.add_argument("--target-mesh", metavar="MESH",
                   help="render this mesh, fit it from a sphere and report the surface distance")
    t.add_argument("--target-size", type=_positive_float, default=None, metavar="UM",
                   help="scale the target so its largest extent is this many um (default: as is)")
    t.add_argument("--shape", type=_positive_int, nargs=3, metavar=("Z", "Y", "X"),
                   help="image shape (default: the mesh plus a margin)")
    t.add_argument("--noise", choices=("none", "poisson"), default="none")
    t.add_argument("--photons", type=_positive_float, default=100.0)
    t.add_argument("--seed", type=int, default=0)
    f.add_argument("--out", required=True, metavar="DIR")

    tr = sub.add_parser("track", help="fit every frame of a time-lapse",
                        description="Fit a TZYX stack frame by frame: the mesh fitted at t starts t+1.")
    tr.add_argument("image", metavar="STACK")
    _add_fit_options(tr)
    tr.add_argument("--out", required=True, metavar="DIR")

    b = sub.add_parser("batch", help="fit many images on a dask cluster",
                       description="Fit many images (and every time point of TZYX stacks) as dask "
                       "tasks. Finished items (DIR/<item>/report.json) are skipped on a rerun; a "
                       "failing item is recorded in DIR/<item>/error.txt and does not stop the batch.")
    b.add_argument("inputs", metavar="INPUT", nargs="+")
    b.add_argument("--out", required=True, metavar="DIR")
    c = b.add_argument_group("cluster")
    c.add_argument("--scheduler", metavar="ADDRESS", help="address of a running dask scheduler")
    c.add_argument("--workers", type=_positive_int, default=None, help="local worker processes")
    c.add_argument("--threads-per-worker", type=_positive_int, default=1,
                   help="torch threads per task (default 1)")
    _add_fit_options(b, batch=True)
    for sp in (r, f, tr, b):  # accepted after the command too
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors")
    return parser


# ---------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 on success)."""
    import warnings

    argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    debug = "--debug" in argv
    previous_showwarning = warnings.showwarning
    if not debug:
        warnings.showwarning = _show_warning
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help / --version
            return int(exc.code or 0)
        if args.command is None:
            raise CLIError("a command is required: render, fit, track or batch (see 'deltamic --help')")
        args.argv = [PROG] + argv
        handler = {"render": cmd_render, "fit": cmd_fit, "track": cmd_track, "batch": cmd_batch}[args.command]
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        _say_error("interrupted")
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place that turns errors into messages
        if debug:
            traceback.print_exc()
        _say_error(_one_line(exc))
        return exc.code if isinstance(exc, CLIError) else (EXIT_USAGE if isinstance(exc, (ValueError, TypeError, OSError)) else EXIT_FAILURE)
    finally:
        warnings.showwarning = previous_showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None):
    # library warnings as one line each, in the command's voice (the source line is noise here)
    _warn(" ".join(str(message).split()))


def _say_error(msg: str) -> None:
    print(f"{PROG}: error: {msg}", file=sys.stderr, flush=True)


def _warn(msg: str) -> None:
    print(f"{PROG}: warning: {msg}", file=sys.stderr, flush=True)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, CLIError):
        return text
    if isinstance(exc, FileNotFoundError) and exc.filename:
        return f"no such file: {exc.filename}"
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or text}"
    if isinstance(exc, (ValueError, TypeError)):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# inputs: images, meshes, seeds, PSF
# ---------------------------------------------------------------------------------------------
def _existing_file(path, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise CLIError(f"{what} {str(p)!r}: no such file")
    if p.is_dir():
        raise CLIError(f"{what} {str(p)!r} is a directory, not a file")
    if not os.access(p, os.R_OK):
        raise CLIError(f"{what} {str(p)!r} is not readable (permission denied)")
    return p


def load_image(path, *, channel=None, frame=None, spacing=None, allow_time: bool = False,
               what: str = "IMAGE"):
    """Read and validate a 3D (or, with ``allow_time``, TZYX) image.

    Returns
    -------
    image : ndarray float32, (Z, Y, X) or (T, Z, Y, X)
    spacing_um : (3,) tuple of float, from ``spacing`` or else the file's metadata
    """
    from . import io as dio
    from ._checks import check_spacing

    p = _existing_file(path, what)
    try:
        image, meta = dio.read_image(p, channel=channel)
    except (ValueError, TypeError) as exc:
        raise CLIError(f"{what} {str(p)!r}: {_one_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - any reader failure means "unreadable"
        raise CLIError(f"{what} {str(p)!r} cannot be read as an image ({_one_line(exc)})") from None
    image = np.asarray(image)
    if image.ndim == 4 and frame is not None:
        if frame >= image.shape[0]:
            raise CLIError(f"--frame {frame} is out of range: {what} has {image.shape[0]} time points")
        image = image[frame]
    elif frame is not None:
        raise CLIError(f"--frame given but {what} {str(p)!r} is not a time series (shape {image.shape})")
    if image.ndim == 4 and not allow_time:
        raise CLIError(f"{what} {str(p)!r} is a time series of shape (T, Z, Y, X) = {image.shape}: "
                       "choose a time point with --frame, or use 'deltamic track'")
    if image.ndim == 3 and allow_time:
        image = image[None]
    want = "(T, Z, Y, X)" if allow_time else "(Z, Y, X)"
    if image.ndim != (4 if allow_time else 3):
        raise CLIError(f"{what} {str(p)!r} must be a 3D stack {want}, got shape {image.shape}"
                       + (" (use --channel for multi-channel images)" if image.ndim > 4 - (not allow_time) else ""))
    if min(image.shape[-3:]) < 4:
        raise CLIError(f"{what} {str(p)!r} is too small: shape {image.shape} (need at least 4 voxels per axis)")
    image = image.astype(np.float32, copy=False)
    bad = int(np.count_nonzero(~np.isfinite(image)))
    if bad:
        raise CLIError(f"{what} {str(p)!r} contains {bad} NaN or Inf voxels")
    if float(image.max()) == float(image.min()):
        raise CLIError(f"{what} {str(p)!r} is constant (every voxel = {float(image.min()):g}): nothing to fit")
    if spacing is not None:
        sp = check_spacing(spacing, "--spacing")
    else:
        sp = tuple(float(s) for s in getattr(meta, "spacing_um", (1.0, 1.0, 1.0)))
        try:
            sp = check_spacing(sp, f"voxel size in {str(p)!r}")
        except ValueError as exc:
            raise CLIError(f"{exc}: give --spacing Z Y X") from None
        if getattr(meta, "spacing_source", None) == "default":
            _warn(f"{what} {str(p)!r} carries no physical voxel size: assuming {sp} um (give --spacing Z Y X)")
    return image, sp


def read_mesh_file(path, spacing_um, mesh_units=None, what: str = "mesh"):
    """Read a mesh in um (image frame); ``mesh_units='voxel'`` scales voxel coordinates by the spacing."""
    from . import io as dio

    p = _existing_file(path, what)
    is_rec = p.suffix.lower() == ".rec"
    try:
        if mesh_units == "um":
            mesh = dio.read_mesh(p, units="um")
        elif mesh_units == "voxel" or is_rec:
            # .rec files hold voxel coordinates of the stack they were segmented from
            mesh = dio.read_mesh(p, spacing_um=tuple(spacing_um), units="voxel" if mesh_units else None)
        else:
            mesh = dio.read_mesh(p)
    except (ValueError, TypeError) as exc:
        raise CLIError(f"{what} {str(p)!r}: {_one_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001
        raise CLIError(f"{what} {str(p)!r} cannot be read as a mesh ({_one_line(exc)})") from None
    if len(mesh.faces) == 0 or len(mesh.verts) < 4:
        raise CLIError(f"{what} {str(p)!r} has no triangles")
    if not np.all(np.isfinite(mesh.verts)):
        raise CLIError(f"{what} {str(p)!r} has NaN or Inf vertex coordinates")
    return mesh


def check_inside(points_lo, points_hi, shape, spacing_um, origin_um=(0.0, 0.0, 0.0), what: str = "mesh",
                 hint: str = "check --spacing and --mesh-units") -> None:
    """Refuse geometry that does not lie inside the image box (voxel centres +- half a voxel)."""
    sp = np.asarray(spacing_um, dtype=float)
    lo_box = np.asarray(origin_um, dtype=float) - 0.5 * sp
    hi_box = lo_box + np.asarray(shape, dtype=float) * sp
    lo, hi = np.asarray(points_lo, dtype=float), np.asarray(points_hi, dtype=float)
    if np.any(lo < lo_box - 1e-9) or np.any(hi > hi_box + 1e-9):
        fmt = lambda a, b: "[" + ", ".join(f"{x:.3g}..{y:.3g}" for x, y in zip(a, b)) + "]"  # noqa: E731
        raise CLIError(f"{what} lies outside the image: it spans (z, y, x) {fmt(lo, hi)} um but the image "
                       f"covers {fmt(lo_box, hi_box)} um ({hint})")


def read_seeds(path) -> tuple[np.ndarray, np.ndarray | None]:
    """Seeds CSV: header ``z,y,x[,radius]`` in um. Returns centres (N, 3) and radii (N,) or None."""
    p = _existing_file(path, "seeds CSV")
    try:
        with open(p, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError) as exc:
        raise CLIError(f"seeds CSV {str(p)!r} cannot be read ({_one_line(exc)})") from None
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise CLIError(f"seeds CSV {str(p)!r} is empty: expected a header z,y,x[,radius] and one row per cell")
    header = [c.strip().lower() for c in rows[0]]
    missing = [c for c in ("z", "y", "x") if c not in header]
    if missing:
        raise CLIError(f"seeds CSV {str(p)!r}: header {','.join(rows[0])!r} lacks column(s) {','.join(missing)} "
                       "(expected z,y,x[,radius] in um)")
    cols = [header.index(c) for c in ("z", "y", "x")]
    rcol = header.index("radius") if "radius" in header else None
    centres, radii = [], []
    for line_no, r in enumerate(rows[1:], start=2):
        try:
            vals = [float(r[c]) for c in cols]
            rad = float(r[rcol]) if rcol is not None and rcol < len(r) and r[rcol].strip() else None
        except (ValueError, IndexError):
            raise CLIError(f"seeds CSV {str(p)!r} line {line_no}: expected numbers, got {','.join(r)!r}") from None
        if not all(math.isfinite(v) for v in vals) or (rad is not None and not (math.isfinite(rad) and rad > 0)):
            raise CLIError(f"seeds CSV {str(p)!r} line {line_no}: coordinates must be finite and radius positive")
        centres.append(vals)
        radii.append(rad)
    if not centres:
        raise CLIError(f"seeds CSV {str(p)!r} has a header but no seeds")
    c = np.asarray(centres, dtype=np.float64)
    if len(c) > 1:
        from scipy.spatial import cKDTree

        d, _ = cKDTree(c).query(c, k=2)
        if np.any(d[:, 1] <= 0):
            raise CLIError(f"seeds CSV {str(p)!r} has duplicate seeds")
    if all(r is None for r in radii):
        return c, None
    if any(r is None for r in radii):
        raise CLIError(f"seeds CSV {str(p)!r}: give a radius for every seed or for none")
    return c, np.asarray(radii, dtype=np.float64)


def estimate_seed_radii(image: np.ndarray, spacing_um, centres: np.ndarray, blur_um=None) -> np.ndarray:
    """Initial sphere radius (um) for each seed of a membrane image.

    The membrane around a seed is where the shell-averaged intensity peaks: the image is
    averaged over spherical shells (half a voxel thick) around each seed out to 0.75 x the
    distance to the nearest other seed (touching cells meet at half that distance), and the
    peak radius r is located to sub-shell precision. Blurring a spherical shell of radius R
    with a Gaussian of width s moves the peak of its radial profile inwards, to
    r ~ R - s^2 / R (the 1/r spreading of the blurred shell), so R = r + s^2 / r is returned,
    with s^2 the mean of ``blur_um**2`` over the axes (default: one voxel per axis, the CLI's
    default PSF). When no interior peak exists (e.g. no membrane signal) the radius falls back
    to a third of the nearest-neighbour distance (a quarter of the smallest image extent for
    a single seed). Radii are capped at 0.45 x the nearest-neighbour distance so the initial
    spheres never overlap.

    Parameters
    ----------
    image : (Z, Y, X) array
    spacing_um : (3,) float
    centres : (n, 3) float, um, image frame
    blur_um : (3,) float, optional
        Standard deviation (z, y, x) of the PSF in um.

    Returns
    -------
    (n,) float radii in um.
    """
    from scipy.ndimage import uniform_filter1d
    from scipy.spatial import cKDTree

    sp = np.asarray(spacing_um, dtype=float)
    s2 = float(np.mean(np.square(sp if blur_um is None else np.asarray(blur_um, dtype=float))))
    shape = np.asarray(image.shape)
    extent = shape * sp
    n = len(centres)
    if n > 1:
        nn = cKDTree(centres).query(centres, k=2)[0][:, 1]
    else:
        nn = np.array([np.inf])
    step = 0.5 * float(sp.min())  # half-voxel shells, then a sub-shell peak
    out = np.empty(n)
    for i, c in enumerate(centres):
        rmax = float(min(0.75 * nn[i], 0.5 * extent.max()))
        lo = np.clip(np.floor((c - rmax) / sp).astype(int), 0, shape - 1)
        hi = np.clip(np.ceil((c + rmax) / sp).astype(int) + 1, 1, shape)
        box = image[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].astype(np.float64)
        grids = np.meshgrid(*[(np.arange(a, b) * s - cc) for a, b, s, cc in zip(lo, hi, sp, c)], indexing="ij")
        r = np.sqrt(sum(g**2 for g in grids))
        inside = r <= rmax
        bins = np.floor(r[inside] / step).astype(int)
        counts = np.bincount(bins)
        sums = np.bincount(bins, weights=box[inside])
        valid = counts > 0
        prof = np.full(len(counts), np.nan)
        prof[valid] = sums[valid] / counts[valid]
        ok = np.isfinite(prof)
        prof = np.interp(np.arange(len(prof)), np.flatnonzero(ok), prof[ok]) if ok.any() else prof
        smooth = uniform_filter1d(prof, 3, mode="nearest")  # to find the peak robustly in noise
        first = int(np.ceil(sp.max() / step))  # shells within a voxel hold a handful of voxels: too noisy
        est = None
        if len(prof) > first + 2:
            tail = smooth[first:]
            ks = first + int(np.argmax(tail))
            # refine on the raw profile (smoothing flattens a peak a few shells wide)
            lo_k, hi_k = max(ks - 1, 1), min(ks + 2, len(prof) - 1)
            k = lo_k + int(np.argmax(prof[lo_k:hi_k]))
            # an interior maximum clearly above the shell-average baseline
            if 1 <= k < len(prof) - 1 and ks < len(prof) - 1 and \
                    smooth[ks] > np.median(tail) + 0.25 * (tail.max() - tail.min()):
                # parabola through the peak shell and its neighbours
                a, b, c = prof[k - 1], prof[k], prof[k + 1]
                curv = a - 2 * b + c
                shift = 0.5 * (a - c) / curv if curv < 0 else 0.0
                r_peak = (k + 0.5 + float(np.clip(shift, -0.5, 0.5))) * step
                est = r_peak + s2 / r_peak
        if est is None:
            est = nn[i] / 3.0 if np.isfinite(nn[i]) else 0.25 * float(extent.min())
        out[i] = min(est, 0.45 * nn[i]) if np.isfinite(nn[i]) else est
    return out


def make_psf(args, spacing_um):
    """The PSF model chosen on the command line.

    Default: a Gaussian with sigma = 1 voxel on each axis. Rationale: a stack sampled at the
    Nyquist rate of its optics has voxels about one PSF standard deviation wide on every axis
    (pixel ~ FWHM / 2.3 ~ sigma), which is how confocal and light-sheet membrane stacks are
    normally acquired; a narrower Gaussian would be under-sampled by the voxel grid (its
    rendered image aliases), a wider one blurs the membranes more than the data do. When the
    optics are known, ``--na --wavelength --ni`` give the physical Gaussian instead, and
    ``--learn-psf`` refines either.
    """
    from . import psf as psfmod

    kind = args.psf
    if kind == "gaussian":
        if args.sigma is not None:
            if len(args.sigma) not in (1, 3):
                raise CLIError(f"--sigma takes 1 or 3 values (z y x) in um, got {len(args.sigma)}")
            sig = tuple(args.sigma) * (3 if len(args.sigma) == 1 else 1)
            return psfmod.GaussianPSF(sigma_um=sig)
        if args.na is not None or args.wavelength is not None:
            if args.na is None or args.wavelength is None or args.ni is None:
                raise CLIError("a Gaussian from optics needs --na, --wavelength and --ni (or give --sigma)")
            return psfmod.GaussianPSF.from_optics(args.na, args.wavelength, args.ni)
        return psfmod.GaussianPSF(sigma_um=tuple(float(s) for s in spacing_um))
    if args.sigma is not None:
        raise CLIError(f"--sigma applies to --psf gaussian, not --psf {kind}")
    missing = [o for o, v in (("--na", args.na), ("--wavelength", args.wavelength), ("--ni", args.ni)) if v is None]
    if kind == "gibson-lanni":
        if args.ns is None:
            missing.append("--ns")
        if missing:
            raise CLIError(f"--psf gibson-lanni needs {' '.join(missing)}")
        cls = getattr(psfmod, "GibsonLanniPSF", None)
        if cls is None:
            raise CLIError("the Gibson-Lanni PSF model is not available in this installation")
        # the immersion medium is taken to be the one the objective was designed for (ni0 = ni)
        kw = dict(na=args.na, wavelength_um=args.wavelength, ni=args.ni, ni0=args.ni, ns=args.ns)
        if args.depth is not None:
            kw["depth_um"] = args.depth
        return _construct(cls, kw)
    if missing:
        raise CLIError(f"--psf hanser needs {' '.join(missing)}")
    cls = getattr(psfmod, "HanserPSF", None)
    if cls is None:
        raise CLIError("the Hanser PSF model is not available in this installation")
    kw = dict(na=args.na, wavelength_um=args.wavelength, ni=args.ni)
    if args.zernike:
        kw["zernike"] = _parse_zernike(args.zernike)
    return _construct(cls, kw)


def _parse_zernike(items) -> dict:
    out = {}
    for it in items:
        try:
            k, v = it.split("=")
            out[int(k)] = float(v)
        except ValueError:
            raise CLIError(f"--zernike expects NOLL=COEFF items like 11=0.1, got {it!r}") from None
        if int(k) < 1 or not math.isfinite(out[int(k)]):
            raise CLIError(f"--zernike {it!r}: Noll index must be >= 1 and the coefficient finite")
    return out


def _construct(cls, kw):
    """Build a PSF model, translating our option names to the model's keyword names."""
    import inspect

    params = inspect.signature(cls).parameters
    aliases = {"ni": ("ni", "n_immersion", "ni0"), "ns": ("ns", "n_sample"),
               "wavelength_um": ("wavelength_um", "wavelength", "emission_wavelength_um"),
               "depth_um": ("depth_um", "particle_depth_um", "zp_um", "depth")}
    out = {}
    for k, v in kw.items():
        for name in aliases.get(k, (k,)):
            if name in params:
                out[name] = v
                break
        else:
            raise CLIError(f"{cls.__name__} has no parameter for {k}")
    return cls(**out)


def _check_device(device: str, backend: str) -> None:
    import torch

    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise CLIError(f"--device must be cpu or cuda, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CLIError("--device cuda requested but torch sees no CUDA device (use --device cpu)")
    if backend != "auto":
        from .meshft import available_backends

        have = available_backends()
        if backend not in have:
            raise CLIError(f"--backend {backend!r} is not available here; available: {', '.join(have)} or auto")


def _count_init(args) -> int:
    return sum(v is not None for v in (args.init, args.seeds, args.labels))


def psf_width_um(psf) -> tuple[float, float, float]:
    """Standard deviation (z, y, x) of a PSF model in um: exact for a Gaussian, else about a
    quarter of its half-extent (where the model is negligible, ~4 sigma)."""
    sig = getattr(psf, "sigma_um", None)
    if sig is not None:
        return tuple(float(v) for v in np.asarray(sig.detach().cpu() if hasattr(sig, "detach") else sig).reshape(3))
    return tuple(0.25 * float(e) for e in psf.extent_um())


def initial_mesh(args, image: np.ndarray, spacing_um, *, stem: str | None = None, psf=None):
    """The starting mesh from --init, --seeds or --labels, in um, validated against the image."""
    from . import geometry

    n = _count_init(args)
    if n != 1:
        raise CLIError("give exactly one of --init MESH, --seeds CSV or --labels TIF"
                       + (f" (got {n})" if n else ""))
    path = lambda s: s.replace("{stem}", stem) if stem is not None else s  # noqa: E731
    shape = image.shape[-3:]
    if args.seeds is not None:
        centres, radii = read_seeds(path(args.seeds))
        check_inside(centres.min(0), centres.max(0), shape, spacing_um, what="a seed", hint="seeds are in um; check --spacing")
        if radii is None:
            radii = estimate_seed_radii(image if image.ndim == 3 else image[0], spacing_um, centres,
                                        blur_um=psf_width_um(psf) if psf is not None else None)
        kw = {}
        if getattr(args, "edge", None) is not None:
            kw = _supported(geometry.seed_spheres, edge_um=args.edge)
        return geometry.seed_spheres(centres, radii, **kw)
    if args.labels is not None:
        lab, _ = _read_label_image(path(args.labels), shape)
        edge = args.edge if getattr(args, "edge", None) is not None else 2.0 * float(np.min(spacing_um))
        mesh = geometry.meshes_from_labels(lab, tuple(spacing_um), edge)
        return mesh
    mesh = read_mesh_file(path(args.init), spacing_um, args.mesh_units, what="--init mesh")
    check_inside(mesh.verts.min(0), mesh.verts.max(0), shape, spacing_um, what=f"--init mesh {path(args.init)!r}")
    return mesh


def _supported(fn, **kw) -> dict:
    import inspect

    params = inspect.signature(fn).parameters
    return {k: v for k, v in kw.items() if k in params}


def _read_label_image(path, shape):
    from . import io as dio

    p = _existing_file(path, "--labels image")
    try:
        lab, meta = dio.read_image(p)
    except Exception as exc:  # noqa: BLE001
        raise CLIError(f"--labels image {str(p)!r} cannot be read ({_one_line(exc)})") from None
    lab = np.asarray(lab)
    if lab.shape != tuple(shape):
        raise CLIError(f"--labels image {str(p)!r} has shape {lab.shape} but the image is {tuple(shape)}")
    if not np.all(np.isfinite(lab)) or np.any(lab != np.round(lab)) or np.any(lab < 0):
        raise CLIError(f"--labels image {str(p)!r} must hold non-negative integer labels")
    lab = lab.astype(np.int32)
    if not lab.any():
        raise CLIError(f"--labels image {str(p)!r} has no labelled voxels")
    return lab, meta


def fit_config(args):
    """FitConfig from the command line; options left unset keep the fitter's defaults."""
    from .fit import FitConfig

    kw = {"learn_psf": bool(getattr(args, "learn_psf", False)), "device": args.device, "backend": args.backend}
    if args.iterations is not None:
        kw["iterations"] = args.iterations
    if args.loss is not None:
        kw["loss"] = args.loss
    if getattr(args, "edge", None) is not None:
        kw["target_edge_um"] = args.edge
    if getattr(args, "levels", None) is not None:
        kw["levels"] = tuple(args.levels)
    import dataclasses

    names = {f.name for f in dataclasses.fields(FitConfig)}
    unknown = [k for k in kw if k not in names]
    if unknown:  # an option the installed fitter does not offer
        raise CLIError(f"this fitter does not support {', '.join(unknown)}")
    try:
        return FitConfig(**kw)
    except (TypeError, ValueError) as exc:
        # FitConfig names its fields; say it in command-line terms
        raise CLIError(str(exc).replace("FitConfig.levels", "--levels").replace("FitConfig.", "fit option ")) from None


# ---------------------------------------------------------------------------------------------
# fitting into an outputs directory
# ---------------------------------------------------------------------------------------------
def run_fit(image, spacing_um, init_mesh, psf, config, *, progress: bool = True, desc: str = "fit"):
    """Run a :class:`~deltamic_core.fit.Fitter` to completion with a progress bar.

    Returns
    -------
    result : FitResult
    timings : dict of seconds (setup, fit, per_iteration)
    psf : the fitted PSF model (a copy; differs from ``psf`` with ``config.learn_psf``)
    """
    from tqdm.auto import tqdm

    from .fit import Fitter

    t0 = time.perf_counter()
    fitter = Fitter(image, tuple(spacing_um), init_mesh, psf, config)
    t1 = time.perf_counter()
    n_iter = int(config.total_iterations)
    bar = tqdm(total=n_iter, desc=desc, unit="it", disable=not progress, file=sys.stderr, leave=False,
               dynamic_ncols=True)

    def callback(step):
        bar.update(1)
        loss = getattr(step, "loss", None)
        if loss is not None:
            bar.set_postfix_str(f"loss={float(loss):.4g}", refresh=False)

    try:
        fitter.run(None, callback=callback)
    finally:
        bar.close()
    t2 = time.perf_counter()
    res = fitter.result()
    n_done = len(_loss_history(res)) or n_iter
    timings = {"setup_s": t1 - t0, "fit_s": t2 - t1, "per_iteration_s": (t2 - t1) / max(n_done, 1)}
    timings.update({f"fitter_{k}_s": float(v) for k, v in (getattr(res, "timings", None) or {}).items()})
    return res, timings, fitter.psf


def _loss_history(res) -> list:
    for name in ("loss_history", "losses", "history"):
        v = getattr(res, name, None)
        if v is not None:
            return [float(x) for x in v]
    return []


def fit_report(res, psf, config, timings: dict, command=None, extra: dict | None = None) -> dict:
    """The content of report.json (measurements are added by the outputs writer)."""
    import dataclasses

    from .outputs import versions

    hist = _loss_history(res)
    report = {
        "command": list(command) if command else None,
        "loss_history": hist,
        "final_loss": hist[-1] if hist else None,
        "iterations": len(hist),
        "timings": dict(timings),
        "psf": psf.as_dict() if hasattr(psf, "as_dict") else repr(psf),
        "photometric": {k: _maybe_float(getattr(res, k, None)) for k in ("gain", "background")
                        if getattr(res, k, None) is not None},
        "backend": _resolved_backend(getattr(res, "backend", None) or getattr(config, "backend", "auto"), config),
        "config": dataclasses.asdict(config),
        "versions": versions(),
    }
    for k in ("level_history", "n_rollbacks", "converged"):
        if hasattr(res, k):
            report[k] = getattr(res, k)
    if isinstance(getattr(res, "psf_params", None), dict):
        report["psf"] = res.psf_params  # the fitted PSF (learnt with --learn-psf)
        report["psf_initial"] = psf.as_dict() if hasattr(psf, "as_dict") else None
    if extra:
        report.update(extra)
    return report


def _resolved_backend(name: str, config) -> str:
    """The mesh transform backend that actually ran ("auto" resolved, as the renderer does)."""
    if name != "auto":
        return name
    try:
        import torch

        from .meshft._registry import resolve

        return resolve("auto", torch.device(getattr(config, "device", "cpu")), announce=False)[0]
    except Exception:  # noqa: BLE001 - a report detail, never worth failing a finished fit
        return name


def _maybe_float(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def fit_to_directory(image, spacing_um, init_mesh, psf, config, out_dir, *, command=None, extra=None,
                     progress: bool = True, stage: bool = True, desc: str = "fit", before_write=None):
    """Fit and write the outputs directory (``report.json`` last; staged when ``stage``).

    ``before_write(tmp_dir, result)`` may add files (e.g. the synthetic image) and return a dict
    merged into the report. Returns ``(result, report, fitted_psf)``.
    """
    from .outputs import staged_directory, write_fit_outputs

    t_start = time.perf_counter()
    res, timings, fitted_psf = run_fit(image, spacing_um, init_mesh, psf, config, progress=progress, desc=desc)
    mesh = res.mesh
    if not np.all(np.isfinite(mesh.verts)):
        raise CLIError("the fit produced a non-finite mesh", EXIT_FAILURE)
    report = fit_report(res, psf, config, timings, command=command, extra=extra)
    report["image"] = {"shape": list(image.shape), "spacing_um": list(spacing_um)}
    report["n_cells"] = int(mesh.n_cells)

    def write(d):
        t_w = time.perf_counter()
        if before_write is not None:
            more = before_write(Path(d), res)
            if more:
                report.update(more)
        report["timings"]["extra_outputs_s"] = time.perf_counter() - t_w
        report["timings"]["fit_total_s"] = time.perf_counter() - t_start  # before the outputs writer
        return write_fit_outputs(d, mesh, shape=image.shape, spacing_um=spacing_um, report=report)

    if stage:
        with staged_directory(out_dir) as tmp:
            report = write(tmp)
    else:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        report = write(out_dir)
    return res, report, fitted_psf


# ---------------------------------------------------------------------------------------------
# subcommands
# ---------------------------------------------------------------------------------------------
def cmd_fit(args) -> int:
    from .outputs import check_replaceable

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
        raise CLIError("fit needs exactly one of --init MESH, --seeds CSV or --labels TIF")
    check_replaceable(args.out)
    _check_device(args.device, args.backend)
    image, spacing = load_image(args.image, channel=args.channel, frame=args.frame, spacing=args.spacing)
    psf = make_psf(args, spacing)
    config = fit_config(args)
    init = initial_mesh(args, image, spacing, psf=psf)
    res, report, _ = fit_to_directory(image, spacing, init, psf, config, args.out, command=args.argv,
                                   extra={"input": str(args.image)}, progress=not args.quiet)
    _print_fit_summary(report, args.out)
    return 0


def _print_fit_summary(report: dict, out) -> None:
    t = report["timings"]
    fl = report.get("final_loss")
    print(f"fitted {report['n_cells']} cell(s) in {report['iterations']} iterations "
          f"({t['fit_s']:.1f} s, final loss {fl:.4g})" if fl is not None else
          f"fitted {report['n_cells']} cell(s) ({t['fit_s']:.1f} s)")
    for c in report.get("cells", []):
        print(f"  cell {c['cell']}: volume {c['volume_um3']:.4g} um^3, area {c['area_um2']:.4g} um^2, "
              f"sphericity {c['sphericity']:.3f}")
    print(f"outputs in {out}")


def _check_out_file(path, suffixes=(".tif", ".tiff"), what="--out") -> Path:
    p = Path(path)
    if p.suffix.lower() not in suffixes:
        raise CLIError(f"{what} {str(p)!r} must end in {' or '.join(suffixes)}")
    if p.is_dir():
        raise CLIError(f"{what} {str(p)!r} is a directory")
    parent = p.absolute().parent
    if not parent.is_dir():
        raise CLIError(f"{what}: directory {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK):
        raise CLIError(f"{what}: directory {str(parent)!r} is not writable")
    return p


def render_mesh_image(mesh, shape, spacing_um, psf, origin_um=(0.0, 0.0, 0.0), *, noise="none", photons=100.0,
                      background=0.0, seed=0, device="cpu", backend="auto") -> np.ndarray:
    """Membrane image of ``mesh`` (float32 (Z, Y, X)); with Poisson noise scaled to ``photons`` at the peak."""
    import torch

    from .render import Renderer

    r = Renderer(tuple(shape), tuple(spacing_um), psf, tuple(origin_um), backend=backend, device=device)
    verts = torch.as_tensor(mesh.verts, dtype=torch.float32, device=device)
    faces = torch.as_tensor(mesh.faces, dtype=torch.int64, device=device)
    weights = torch.as_tensor(mesh.face_intensity(), dtype=torch.float32, device=device)
    with torch.no_grad():
        img = r.render(verts, faces, weights).cpu().numpy().astype(np.float64)
    # ringing of the band-limited render leaves tiny negative values: an intensity is >= 0
    img = np.clip(img, 0.0, None)
    if noise == "poisson":
        peak = float(img.max())
        if peak <= 0:
            raise CLIError("the rendered image is empty (is the mesh inside the image?)")
        lam = img * (photons / peak) + background
        img = np.random.default_rng(seed).poisson(lam).astype(np.float64)
    elif background:
        img = img + background
    return img.astype(np.float32)


def cmd_render(args) -> int:
    from . import io as dio
    from ._checks import check_spacing

    out = _check_out_file(args.out)
    spacing = check_spacing(args.spacing, "--spacing")
    _check_device(args.device, args.backend)
    if args.background < 0 or not math.isfinite(args.background):
        raise CLIError(f"--background must be >= 0, got {args.background}")
    mesh = read_mesh_file(args.mesh, spacing, args.mesh_units, what="MESH")
    check_inside(mesh.verts.min(0), mesh.verts.max(0), args.shape, spacing, args.origin, what=f"MESH {args.mesh!r}")
    psf = make_psf(args, spacing)
    t0 = time.perf_counter()
    img = render_mesh_image(mesh, args.shape, spacing, psf, args.origin, noise=args.noise, photons=args.photons,
                            background=args.background, seed=args.seed, device=args.device, backend=args.backend)
    dio.write_tiff(out, img, spacing)
    print(f"rendered {len(mesh.faces)} triangles on {tuple(args.shape)} voxels with {psf.describe()} "
          f"in {time.perf_counter() - t0:.2f} s -> {out}")
    return 0


# ---------------------------------------------------------------------------------------------
# synthetic benchmark: fit a sphere to the image of a known mesh
# ---------------------------------------------------------------------------------------------
def surface_distance(mesh_a, mesh_b, n_samples: int = 20000, seed: int = 0) -> dict:
    """Symmetric distances between two surfaces (um).

    Points are the vertices plus ``n_samples`` area-uniform random points of each surface; the
    distance of each to the *other surface* (exact point-to-triangle distance, not to its
    samples) is computed with gpytoolbox's AABB tree.

    Returns
    -------
    dict with ``mean_um`` (mean over both directions), ``rms_um``, ``hausdorff_um`` (max over
    both directions), ``a_to_b_mean_um`` and ``b_to_a_mean_um``.
    """
    import gpytoolbox

    rng = np.random.default_rng(seed)

    def samples(m):
        v, f = m.verts, m.faces
        a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
        area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
        idx = rng.choice(len(f), size=n_samples, p=area / area.sum())
        u, w = rng.random((2, n_samples))
        flip = u + w > 1
        u[flip], w[flip] = 1 - u[flip], 1 - w[flip]
        pts = a[idx] + u[:, None] * (b[idx] - a[idx]) + w[:, None] * (c[idx] - a[idx])
        return np.concatenate([v, pts])

    def dist(p, m):
        d2 = gpytoolbox.squared_distance(p, m.verts, m.faces.astype(np.int32), use_cpp=True, use_aabb=True)[0]
        return np.sqrt(np.maximum(d2, 0.0))

    dab = dist(samples(mesh_a), mesh_b)
    dba = dist(samples(mesh_b), mesh_a)
    both = np.concatenate([dab, dba])
    return {"mean_um": float(both.mean()), "rms_um": float(np.sqrt((both**2).mean())),
            "hausdorff_um": float(max(dab.max(), dba.max())),
            "a_to_b_mean_um": float(dab.mean()), "b_to_a_mean_um": float(dba.mean())}


def place_target(mesh, size_um=None, spacing_um=None, shape=None, margin_voxels: float = 6.0):
    """Scale a toy mesh (largest extent -> ``size_um``) and centre it in an image box.

    Defaults: the mesh as it is (in um); an isotropic spacing putting 32 voxels across the
    largest extent; a shape holding the mesh plus ``margin_voxels`` (or 4 PSF sigmas) per side.
    Returns ``(mesh, spacing_um, shape)``; the mesh is in the image frame.
    """
    from ._checks import check_shape, check_spacing

    v = mesh.verts.astype(np.float64)
    lo, hi = v.min(0), v.max(0)
    ext = float((hi - lo).max())
    if not ext > 0:
        raise CLIError("--target-mesh is degenerate (zero extent)")
    scale = 1.0 if size_um is None else float(size_um) / ext
    v = (v - 0.5 * (lo + hi)) * scale
    ext *= scale
    sp = np.asarray(check_spacing(spacing_um if spacing_um is not None else ext / 32.0, "--spacing"))
    half = 0.5 * (v.max(0) - v.min(0))
    if shape is None:
        shape = tuple(int(np.ceil(2 * (h / s + margin_voxels))) + 1 for h, s in zip(half, sp))
    shape = check_shape(shape, "--shape")
    centre = 0.5 * (np.asarray(shape) - 1) * sp
    return mesh.copy(verts=v + centre), tuple(float(s) for s in sp), shape


def cmd_fit_target(args) -> int:
    from . import geometry
    from . import io as dio
    from .outputs import check_replaceable

    if args.image is not None:
        raise CLIError("give either IMAGE or --target-mesh, not both")
    if _count_init(args):
        raise CLIError("--target-mesh starts from a sphere: drop --init/--seeds/--labels")
    if args.channel is not None or args.frame is not None:
        raise CLIError("--channel/--frame apply to an IMAGE, not to --target-mesh")
    check_replaceable(args.out)
    _check_device(args.device, args.backend)
    raw = read_mesh_file(args.target_mesh, args.spacing or (1.0, 1.0, 1.0), args.mesh_units, what="--target-mesh")
    target, spacing, shape = place_target(raw, args.target_size, args.spacing, args.shape)
    check_inside(target.verts.min(0), target.verts.max(0), shape, spacing, what="the target mesh",
                 hint="enlarge --shape or reduce --target-size")
    # the fit starts from the PSF that made the image (and refines it with --learn-psf)
    psf = make_psf(args, spacing)
    config = fit_config(args)
    psf_truth = psf.as_dict() if hasattr(psf, "as_dict") else None
    image = render_mesh_image(target, shape, spacing, psf, noise=args.noise, photons=args.photons, seed=args.seed,
                              device=args.device, backend=args.backend)
    table = geometry.measure(target)
    from .outputs import _split_measure

    cells, _ = _split_measure(table)
    vol = abs(cells[0]["volume_um3"])
    centroid = np.array([cells[0]["centroid_z_um"], cells[0]["centroid_y_um"], cells[0]["centroid_x_um"]])
    radius = (3.0 * vol / (4.0 * math.pi)) ** (1.0 / 3.0)
    kw = _supported(geometry.seed_spheres, edge_um=args.edge) if args.edge is not None else {}
    init = geometry.seed_spheres(centroid[None], np.array([radius]), **kw)

    def before_write(d: Path, res):
        dio.write_tiff(d / "image.tif", image, spacing)
        dio.write_mesh(d / "target.ply", target)
        dist = surface_distance(res.mesh, target)
        dist_init = surface_distance(init, target)
        vox = float(np.prod(spacing) ** (1.0 / 3.0))
        metrics = {**dist, "mean_voxels": dist["mean_um"] / vox, "hausdorff_voxels": dist["hausdorff_um"] / vox,
                   "voxel_um": vox, "initial_sphere": dist_init}
        return {"target": {"mesh": str(args.target_mesh), "size_um": float((target.verts.max(0) - target.verts.min(0)).max()),
                           "volume_um3": vol, "sphere_radius_um": radius, "psf_truth": psf_truth,
                           "noise": args.noise, "photons": args.photons if args.noise == "poisson" else None},
                "surface_distance": metrics}

    res, report, _ = fit_to_directory(image, spacing, init, psf, config, args.out, command=args.argv,
                                   extra={"input": None}, progress=not args.quiet, before_write=before_write)
    d = report["surface_distance"]
    print(f"target {Path(args.target_mesh).name}: {tuple(shape)} voxels of {spacing} um, "
          f"sphere r = {radius:.3g} um -> fitted in {report['iterations']} iterations ({report['timings']['fit_s']:.1f} s)")
    print(f"surface distance: mean {d['mean_um']:.4g} um ({d['mean_voxels']:.3g} voxels), "
          f"Hausdorff {d['hausdorff_um']:.4g} um ({d['hausdorff_voxels']:.3g} voxels); "
          f"initial sphere: mean {d['initial_sphere']['mean_um']:.4g} um, Hausdorff {d['initial_sphere']['hausdorff_um']:.4g} um")
    print(f"outputs in {args.out}")
    return 0


# ---------------------------------------------------------------------------------------------
# time-lapse and batch
# ---------------------------------------------------------------------------------------------
def cmd_track(args) -> int:
    from .outputs import check_replaceable
    from .track import track_stack

    if args.frame is not None:
        raise CLIError("track fits every frame: drop --frame")
    if _count_init(args) != 1:
        raise CLIError("track needs exactly one of --init MESH, --seeds CSV or --labels TIF (for the first frame)")
    check_replaceable(args.out)
    _check_device(args.device, args.backend)
    stack, spacing = load_image(args.image, channel=args.channel, spacing=args.spacing, allow_time=True, what="STACK")
    psf = make_psf(args, spacing)
    config = fit_config(args)
    init = initial_mesh(args, stack[0], spacing, psf=psf)
    rows = track_stack(stack, spacing, init, psf, config, args.out, command=args.argv, progress=not args.quiet,
                       input_path=str(args.image))
    n_t = len({r["t"] for r in rows})
    print(f"tracked {len({r['cell'] for r in rows})} cell(s) over {n_t} frame(s); outputs in {args.out}")
    return 0


def cmd_batch(args) -> int:
    from .batch import expand_items, format_summary, run_tasks, fit_item

    if args.frame is not None:
        raise CLIError("batch fits every time point of TZYX inputs: drop --frame")
    if _count_init(args) != 1:
        raise CLIError("batch needs exactly one of --init, --seeds or --labels ('{stem}' in the path is "
                       "replaced by each input's name)")
    if args.scheduler and args.workers:
        raise CLIError("give --scheduler ADDRESS or --workers N, not both")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {str(out)!r} exists and is a file")
    if not out.absolute().parent.is_dir():
        raise CLIError(f"--out: directory {str(out.absolute().parent)!r} does not exist")
    _check_device(args.device, args.backend)
    make_psf(args, (1.0, 1.0, 1.0))  # fail now on PSF options every item would reject
    fit_config(args)
    try:
        items = expand_items(args.inputs)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    print(f"batch: {len(items)} item(s) from {len(args.inputs)} input(s) -> {out}")
    results = run_tasks(fit_item, items, out, kwargs={"fit_args": args}, scheduler=args.scheduler,
                        n_workers=args.workers, threads_per_worker=args.threads_per_worker)
    print(format_summary(results))
    return EXIT_FAILURE if any(r["status"] == "failed" for r in results) else 0
