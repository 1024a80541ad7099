"""Reading and checking the inputs of a fit: image, seeds (with radius estimation), label
images, meshes, and the initial mesh from an :class:`InitSpec`.

Every problem ends in one :class:`~deltamic_core.pipeline.errors.InputError` whose message
names the file and the command-line option involved, raised before any work is done.
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError, InputWarning, one_line


def _existing_file(path, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} {str(p)!r}: no such file")
    if p.is_dir():
        raise InputError(f"{what} {str(p)!r} is a directory, not a file")
    if not os.access(p, os.R_OK):
        raise InputError(f"{what} {str(p)!r} is not readable (permission denied)")
    return p


def load_image(path, *, channel=None, frame=None, spacing=None, allow_time: bool = False, what: str = "IMAGE"):
    """Read and validate a 3D (or, with ``allow_time``, TZYX) image.

    Returns
    -------
    image : ndarray float32, (Z, Y, X) or (T, Z, Y, X)
    spacing_um : (3,) tuple of float, from ``spacing`` or else the file's metadata
    """
    from .. import io as dio
    from .._checks import check_image, check_spacing
    from ..io.image import SpacingWarning

    p = _existing_file(path, what)
    if spacing is not None:
        try:
            spacing = check_spacing(spacing, "--spacing")
        except (ValueError, TypeError) as exc:
            raise InputError(str(exc)) from None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", SpacingWarning)
            image, meta = dio.read_image(p, channel=channel, spacing_um=spacing)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{what} {str(p)!r}: {_cli_words(one_line(exc))}") from None
    except Exception as exc:  # noqa: BLE001 - any reader failure means "unreadable"
        raise InputError(f"{what} {str(p)!r} cannot be read as an image ({one_line(exc)})") from None
    image = np.asarray(image)
    if image.ndim == 4 and frame is not None:
        if frame >= image.shape[0]:
            raise InputError(f"--frame {frame} is out of range: {what} has {image.shape[0]} time points")
        image = image[frame]
    elif frame is not None:
        raise InputError(f"--frame given but {what} {str(p)!r} is not a time series (shape {image.shape})")
    if image.ndim == 4 and not allow_time:
        raise InputError(
            f"{what} {str(p)!r} is a time series of shape (T, Z, Y, X) = {image.shape}: "
            "choose a time point with --frame, or use 'deltamic track'"
        )
    if image.ndim == 3 and allow_time:
        image = image[None]
    want = "(T, Z, Y, X)" if allow_time else "(Z, Y, X)"
    if image.ndim != (4 if allow_time else 3):
        raise InputError(
            f"{what} {str(p)!r} must be a 3D stack {want}, got shape {image.shape}"
            + (" (use --channel for multi-channel images)" if image.ndim > 4 - (not allow_time) else "")
        )
    if min(image.shape[-3:]) < 4:
        raise InputError(f"{what} {str(p)!r} is too small: shape {image.shape} (need at least 4 voxels per axis)")
    try:
        image = check_image(image.astype(np.float32, copy=False), f"{what} {str(p)!r}", ndim=image.ndim)
    except ValueError as exc:  # NaN/Inf voxels or a constant image
        raise InputError(str(exc)) from None
    if spacing is not None:
        sp = check_spacing(spacing, "--spacing")
    else:
        sp = tuple(float(s) for s in meta.spacing_um)
        try:
            sp = check_spacing(sp, f"voxel size in {str(p)!r}")
        except ValueError as exc:
            raise InputError(f"{exc}: give --spacing Z Y X") from None
    for w in caught:
        if issubclass(w.category, SpacingWarning):
            # one line, in the user's terms (the napari reader shows the same provenance)
            warnings.warn(f"{w.message} (give --spacing Z Y X)", InputWarning, stacklevel=2)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return image, sp


def _cli_words(msg: str) -> str:
    """Core messages name keyword arguments; say them as command-line options."""
    return (
        msg.replace("pass channel=<index or name>", "give --channel N")
        .replace("channel=", "--channel ")
        .replace("give the voxel size explicitly", "give --spacing Z Y X")
    )


def read_mesh_file(path, spacing_um, mesh_units=None, what: str = "mesh"):
    """Read a mesh in um (image frame); ``mesh_units='voxel'`` scales voxel coordinates by the spacing."""
    from .. import io as dio

    p = _existing_file(path, what)
    is_rec = p.suffix.lower() == ".rec"
    try:
        if mesh_units == "um":
            mesh = dio.read_mesh(p, units="um")
        elif mesh_units is None and is_rec and _rec_declares_length_unit(p):
            mesh = dio.read_mesh(p)  # '# units = um' (what deltamic writes): no voxel scaling
        elif mesh_units == "voxel" or is_rec:
            # .rec files of other tools hold voxel coordinates of the stack they were segmented from
            mesh = dio.read_mesh(p, spacing_um=tuple(spacing_um), units="voxel" if mesh_units else None)
        else:
            mesh = dio.read_mesh(p)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{what} {str(p)!r}: {one_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - any reader failure means "unreadable"
        raise InputError(f"{what} {str(p)!r} cannot be read as a mesh ({one_line(exc)})") from None
    _check_mesh(mesh, f"{what} {str(p)!r}")
    return mesh


def _rec_declares_length_unit(path) -> bool:
    from ..io.rec import read_rec

    try:
        units = read_rec(path).comments.get("units", "")
    except (ValueError, OSError, UnicodeDecodeError):
        return False
    return bool(units) and units.strip().lower() not in ("voxel", "voxels")


def _check_mesh(mesh, what: str) -> None:
    if len(mesh.faces) == 0 or len(mesh.verts) < 4:
        raise InputError(f"{what} has no triangles")
    if not np.all(np.isfinite(mesh.verts)):
        raise InputError(f"{what} has NaN or Inf vertex coordinates")


def check_inside(
    points_lo,
    points_hi,
    shape,
    spacing_um,
    origin_um=(0.0, 0.0, 0.0),
    what: str = "mesh",
    hint: str = "check --spacing and --mesh-units",
) -> None:
    """Refuse geometry that does not lie inside the image box (voxel centres +- half a voxel)."""
    sp = np.asarray(spacing_um, dtype=float)
    lo_box = np.asarray(origin_um, dtype=float) - 0.5 * sp
    hi_box = lo_box + np.asarray(shape, dtype=float) * sp
    lo, hi = np.asarray(points_lo, dtype=float), np.asarray(points_hi, dtype=float)
    if np.any(lo < lo_box - 1e-9) or np.any(hi > hi_box + 1e-9):
        fmt = lambda a, b: "[" + ", ".join(f"{x:.3g}..{y:.3g}" for x, y in zip(a, b)) + "]"
        raise InputError(
            f"{what} lies outside the image: it spans (z, y, x) {fmt(lo, hi)} um but the image "
            f"covers {fmt(lo_box, hi_box)} um ({hint})"
        )


def read_seeds(path) -> tuple[np.ndarray, np.ndarray | None]:
    """Seeds CSV: header ``z,y,x[,radius]`` in um. Returns centres (N, 3) and radii (N,) or None."""
    p = _existing_file(path, "seeds CSV")
    try:
        with open(p, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"seeds CSV {str(p)!r} cannot be read ({one_line(exc)})") from None
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise InputError(f"seeds CSV {str(p)!r} is empty: expected a header z,y,x[,radius] and one row per cell")
    header = [c.strip().lower() for c in rows[0]]
    missing = [c for c in ("z", "y", "x") if c not in header]
    if missing:
        raise InputError(
            f"seeds CSV {str(p)!r}: header {','.join(rows[0])!r} lacks column(s) {','.join(missing)} "
            "(expected z,y,x[,radius] in um)"
        )
    cols = [header.index(c) for c in ("z", "y", "x")]
    rcol = header.index("radius") if "radius" in header else None
    centres, radii = [], []
    for line_no, r in enumerate(rows[1:], start=2):
        try:
            vals = [float(r[c]) for c in cols]
            rad = float(r[rcol]) if rcol is not None and rcol < len(r) and r[rcol].strip() else None
        except (ValueError, IndexError):
            raise InputError(f"seeds CSV {str(p)!r} line {line_no}: expected numbers, got {','.join(r)!r}") from None
        if not all(math.isfinite(v) for v in vals) or (rad is not None and not (math.isfinite(rad) and rad > 0)):
            raise InputError(f"seeds CSV {str(p)!r} line {line_no}: coordinates must be finite and radius positive")
        centres.append(vals)
        radii.append(rad)
    if not centres:
        raise InputError(f"seeds CSV {str(p)!r} has a header but no seeds")
    c = np.asarray(centres, dtype=np.float64)
    if len(c) > 1:
        from scipy.spatial import cKDTree

        d, _ = cKDTree(c).query(c, k=2)
        if np.any(d[:, 1] <= 0):
            raise InputError(f"seeds CSV {str(p)!r} has duplicate seeds")
    if all(r is None for r in radii):
        return c, None
    if any(r is None for r in radii):
        raise InputError(f"seeds CSV {str(p)!r}: give a radius for every seed or for none")
    return c, np.asarray(radii, dtype=np.float64)


def foreground(image: np.ndarray, spacing_um, blur_um=None, threshold: float | None = None):
    """``(smooth, mask)``: the image smoothed by a Gaussian of ``blur_um`` (default one voxel
    per axis) and its bright objects, thresholded at ``threshold`` (default Otsu's threshold of
    the smoothed image), holes filled: the foreground of :func:`auto_seeds`."""
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    sp = np.asarray(spacing_um, dtype=float)
    blur = np.broadcast_to(np.asarray(sp if blur_um is None else blur_um, dtype=float), (3,))
    smooth = ndimage.gaussian_filter(np.asarray(image, dtype=np.float64), blur / sp, mode="nearest")
    if float(smooth.max() - smooth.min()) <= 1e-12 * max(abs(float(smooth.max())), 1.0):
        raise InputError("no bright objects found for automatic seeds (the image has no contrast)")
    level = threshold_otsu(smooth) if threshold is None else float(threshold)
    mask = ndimage.binary_fill_holes(smooth > level)
    if not mask.any():
        raise InputError("no bright objects found for automatic seeds (the image has no contrast)")
    return smooth, mask


def auto_seeds(
    image: np.ndarray, spacing_um, blur_um=None, min_distance_um: float | None = None, threshold: float | None = None
) -> np.ndarray:
    """Seeds (n, 3) um for interior-stained objects: the centres of the largest balls that fit
    in the bright objects.

    The image is smoothed by a Gaussian of ``blur_um`` (default one voxel per axis, against the
    noise) and thresholded at ``threshold`` (default Otsu's threshold of the smoothed image),
    holes filled; the Euclidean distance to the background (um) has a maximum at the middle of
    every object, touching objects included (the blurred image of two touching nuclei has one
    maximum near their contact, their mask has a neck). Maxima are kept highest first; one
    closer than 1.25 x the larger inscribed radius (its distance value) to a kept one lies in
    the same object and is dropped (measured on the nuclei of ``benchmarks/bench_interior.py``:
    1.0 keeps spurious maxima at the ends of elongated objects, 1.5 merges touching ones), or
    with ``min_distance_um`` one closer than that. Ordered by the smoothed brightness at the
    seed, brightest first. Coordinates are relative to voxel (0, 0, 0).
    """
    from scipy import ndimage
    from skimage.feature import peak_local_max

    sp = np.asarray(spacing_um, dtype=float)
    smooth, mask = foreground(image, sp, blur_um, threshold)
    dist = ndimage.distance_transform_edt(mask, sampling=sp)
    cand = peak_local_max(dist, min_distance=1, labels=ndimage.label(mask)[0], exclude_border=False)
    if len(cand) == 0:
        raise InputError("no bright objects found for automatic seeds (the image has no contrast)")
    val = dist[tuple(cand.T)]
    order = np.argsort(-val, kind="stable")
    kept, radius = [], []
    for p, r in zip(cand[order] * sp, val[order]):
        if all(
            np.linalg.norm(p - q) >= (1.25 * max(r, rq) if min_distance_um is None else float(min_distance_um))
            for q, rq in zip(kept, radius)
        ):
            kept.append(p)
            radius.append(r)
    kept = np.array(kept)
    bright = smooth[tuple(np.round(kept / sp).astype(int).T)]
    return kept[np.argsort(-bright, kind="stable")]


def estimate_interior_radii(image: np.ndarray, spacing_um, centres: np.ndarray, blur_um=None) -> np.ndarray:
    """Initial sphere radius (um) for each seed of a filled (interior-stained) object.

    The shell-averaged intensity around the seed (half-voxel shells out to 0.75 x the distance
    to the nearest other seed) falls from the object's level (the mean of the shells within one
    voxel size) to the background (the lowest smoothed shell); the radius r where it crosses
    halfway is found by linear interpolation. Blurring a ball of radius R by a Gaussian of width
    s moves that crossing inwards by about s^2 / R (the curvature of the edge), so
    R = r + s^2 / r is returned (s^2 as in :func:`estimate_seed_radii`). Without a crossing
    (no contrast) the radius falls back to a third of the nearest-neighbour distance (a quarter
    of the smallest image extent for a single seed); radii are capped at 0.45 x the
    nearest-neighbour distance.
    """
    from scipy.ndimage import uniform_filter1d

    sp = np.asarray(spacing_um, dtype=float)
    s2 = float(np.mean(np.square(sp if blur_um is None else np.asarray(blur_um, dtype=float))))
    extent = np.asarray(image.shape) * sp
    step = 0.5 * float(sp.min())
    out = np.empty(len(centres))
    for i, (nn_i, counts, sums) in enumerate(_shell_profiles(image, sp, centres, step)):
        ok = counts > 0
        est = None
        if ok.sum() > 4:
            radii_k = (np.flatnonzero(ok) + 0.5) * step
            prof = uniform_filter1d(sums[ok] / counts[ok], 3, mode="nearest")
            core = prof[radii_k <= max(float(sp.max()), 1.5 * step)]
            top = float(core.mean()) if len(core) else float(prof[0])
            bottom = float(prof.min())
            if top > bottom:
                half = 0.5 * (top + bottom)
                below = np.flatnonzero(prof < half)
                if len(below) and below[0] > 0:
                    k = int(below[0])
                    r0, r1, p0, p1 = radii_k[k - 1], radii_k[k], prof[k - 1], prof[k]
                    rc = r0 + (p0 - half) / (p0 - p1) * (r1 - r0)
                    est = float(rc + s2 / rc)
        out[i] = _capped_radius(est, nn_i, extent)
    return out


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

    sp = np.asarray(spacing_um, dtype=float)
    s2 = float(np.mean(np.square(sp if blur_um is None else np.asarray(blur_um, dtype=float))))
    extent = np.asarray(image.shape) * sp
    step = 0.5 * float(sp.min())  # half-voxel shells, then a sub-shell peak
    out = np.empty(len(centres))
    for i, (nn_i, counts, sums) in enumerate(_shell_profiles(image, sp, centres, step)):
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
            if (
                1 <= k < len(prof) - 1
                and ks < len(prof) - 1
                and smooth[ks] > np.median(tail) + 0.25 * (tail.max() - tail.min())
            ):
                # parabola through the peak shell and its neighbours
                a, b, c = prof[k - 1], prof[k], prof[k + 1]
                curv = a - 2 * b + c
                shift = 0.5 * (a - c) / curv if curv < 0 else 0.0
                r_peak = (k + 0.5 + float(np.clip(shift, -0.5, 0.5))) * step
                est = r_peak + s2 / r_peak
        out[i] = _capped_radius(est, nn_i, extent)
    return out


def _shell_profiles(image, sp, centres, step):
    """For each seed: (distance to the nearest other seed, voxel count and intensity sum per
    spherical shell of width ``step`` around it), out to 0.75 x that distance (at most half the
    largest image extent). The radial profiles both radius estimators read."""
    from scipy.spatial import cKDTree

    shape = np.asarray(image.shape)
    extent = shape * sp
    nn = cKDTree(centres).query(centres, k=2)[0][:, 1] if len(centres) > 1 else np.array([np.inf])
    for i, c in enumerate(centres):
        rmax = float(min(0.75 * nn[i], 0.5 * extent.max()))
        lo = np.clip(np.floor((c - rmax) / sp).astype(int), 0, shape - 1)
        hi = np.clip(np.ceil((c + rmax) / sp).astype(int) + 1, 1, shape)
        box = image[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].astype(np.float64)
        grids = np.meshgrid(*[(np.arange(a, b) * s - cc) for a, b, s, cc in zip(lo, hi, sp, c)], indexing="ij")
        r = np.sqrt(sum(g**2 for g in grids))
        inside = r <= rmax
        bins = np.floor(r[inside] / step).astype(int)
        yield nn[i], np.bincount(bins), np.bincount(bins, weights=box[inside])


def _capped_radius(est, nn_i, extent):
    """The estimate, or without one a third of the nearest-neighbour distance (a quarter of the
    smallest image extent for a single seed); capped at 0.45 x that distance."""
    if est is None:
        est = nn_i / 3.0 if np.isfinite(nn_i) else 0.25 * float(extent.min())
    return min(est, 0.45 * nn_i) if np.isfinite(nn_i) else est


def read_label_image(path, shape):
    """A label image file matching ``shape``: int32, 0 = background, cells = labels."""
    from .. import io as dio

    p = _existing_file(path, "--labels image")
    try:
        lab, meta = dio.read_image(p)
    except Exception as exc:  # noqa: BLE001 - any reader failure means "unreadable"
        raise InputError(f"--labels image {str(p)!r} cannot be read ({one_line(exc)})") from None
    lab = np.asarray(lab)
    if lab.shape != tuple(shape):
        raise InputError(f"--labels image {str(p)!r} has shape {lab.shape} but the image is {tuple(shape)}")
    if not np.all(np.isfinite(lab)) or np.any(lab != np.round(lab)) or np.any(lab < 0):
        raise InputError(f"--labels image {str(p)!r} must hold non-negative integer labels")
    lab = lab.astype(np.int32)
    if not lab.any():
        raise InputError(f"--labels image {str(p)!r} has no labelled voxels")
    return lab, meta


INIT_KINDS = ("mesh", "seeds", "labels", "auto")
_INIT_OPTION = {"mesh": "--init mesh", "seeds": "--seeds CSV", "labels": "--labels image"}


@dataclass(frozen=True)
class InitSpec:
    """Where the initial meshes come from (picklable).

    kind : "mesh", "seeds" or "labels"
    path : a file (``{stem}`` is replaced by the input's name in batch mode), or None with
    data : the same in memory: a Mesh (um, image frame), ``(centres_um (n, 3), radii_um (n,)
        or None)``, or an integer label image on the image grid
    mesh_units : "um" or "voxel" for mesh files (default: um, voxel for .rec)
    """

    kind: str
    path: str | None = None
    data: object = None
    mesh_units: str | None = None

    def __post_init__(self):
        if self.kind not in INIT_KINDS:
            raise InputError(f"initial mesh kind must be one of {', '.join(INIT_KINDS)}, got {self.kind!r}")
        if self.kind != "auto" and (self.path is None) == (self.data is None):
            raise InputError(f"the initial {self.kind} needs a file or in-memory data (exactly one)")

    def for_stem(self, stem: str) -> InitSpec:
        """The spec of one batch item: ``{stem}`` in the path replaced by ``stem``."""
        if self.path is None or "{stem}" not in self.path:
            return self
        return InitSpec(self.kind, self.path.replace("{stem}", stem), None, self.mesh_units)


def initial_mesh(
    spec: InitSpec,
    image: np.ndarray | None,
    spacing_um,
    *,
    psf=None,
    edge_um: float | None = None,
    origin_um=(0.0, 0.0, 0.0),
    shape=None,
    stain: str = "membrane",
):
    """The starting mesh of ``spec``, in um in the image frame, validated against the image.

    Seeds without radii get :func:`estimate_seed_radii` (with the width of ``psf``), or for
    ``stain="interior"`` :func:`estimate_interior_radii`; ``edge_um`` is the target triangle
    edge of spheres and label surfaces. Without an image (``image=None``) the grid is ``shape``
    and seeds need their radii.
    """
    from .. import geometry
    from .psfspec import psf_width_um

    shape = tuple(image.shape[-3:] if image is not None else shape)
    origin = np.asarray(origin_um, dtype=float)
    if spec.kind == "auto":
        if stain == "membrane":
            raise InputError("--auto-seeds finds filled objects: use it with --stain interior or --stain both")
        if image is None:
            raise InputError("automatic seeds are found in the image: choose an image")
        img = image if image.ndim == 3 else image[0]
        centres = auto_seeds(img, spacing_um) + origin
        radii = estimate_interior_radii(
            img, spacing_um, centres - origin, blur_um=psf_width_um(psf) if psf is not None else None
        )
        return geometry.seed_spheres(centres, radii, edge_um=edge_um)
    if spec.kind == "seeds":
        centres, radii = read_seeds(spec.path) if spec.path is not None else _seed_arrays(spec.data)
        check_inside(
            centres.min(0),
            centres.max(0),
            shape,
            spacing_um,
            origin_um,
            what="a seed",
            hint="seeds are in um; check --spacing",
        )
        _check_cost(shape, n_seeds=len(centres))
        if radii is None:
            if image is None:
                raise InputError("seed radii are estimated from the image: choose an image (or give the radii)")
            estimator = estimate_interior_radii if stain == "interior" else estimate_seed_radii
            radii = estimator(
                image if image.ndim == 3 else image[0],
                spacing_um,
                centres - origin,
                blur_um=psf_width_um(psf) if psf is not None else None,
            )
        return seed_mesh(centres, radii, spacing_um, edge_um=edge_um, shape=shape)
    if spec.kind == "labels":
        lab = read_label_image(spec.path, shape) if spec.path is not None else _label_array(spec.data, shape)
        edge = edge_um if edge_um is not None else 2.0 * float(np.min(spacing_um))
        mesh = geometry.meshes_from_labels(lab, tuple(spacing_um), edge)
        return mesh.copy(verts=mesh.verts + origin) if np.any(origin) else mesh
    if spec.path is not None:
        mesh = read_mesh_file(spec.path, spacing_um, spec.mesh_units, what="--init mesh")
        what = f"--init mesh {spec.path!r}"
    else:
        mesh, what = spec.data, "the initial mesh"
        _check_mesh(mesh, what)
    check_inside(mesh.verts.min(0), mesh.verts.max(0), shape, spacing_um, origin_um, what=what)
    mesh = checked_cells(mesh, what)
    _check_cost(shape, n_seeds=int(mesh.n_cells), n_faces=len(mesh.faces))
    return mesh


def checked_cells(mesh, what: str):
    """Cells that can be measured: components of an unlabelled mesh split into cells, open
    surfaces closed (or refused), overlapping cells refused (:func:`geometry.validate.prepare_cells`)."""
    from ..geometry.validate import prepare_cells

    try:
        out, notes = prepare_cells(mesh, what=what)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    for n in notes:
        warnings.warn(n, InputWarning, stacklevel=3)
    return out


def _check_cost(shape, **kw) -> None:
    from ..geometry.validate import check_fit_cost

    try:
        check_fit_cost(shape, **kw)
    except ValueError as exc:
        raise InputError(str(exc)) from None


def seed_mesh(centres, radii, spacing_um, *, edge_um=None, shape=None, what: str = "seed"):
    """Seed spheres by the one rule of the command line and the napari widget.

    Seeds smaller than a voxel are refused; overlapping spheres are shrunk until they touch
    (with a warning saying how many); too many seeds for the image are refused.
    """
    from .. import geometry
    from ..geometry.validate import check_seed_radii, shrink_overlapping_seeds

    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 3)
    radii = np.broadcast_to(np.asarray(radii, dtype=np.float64), (len(centres),)).copy()
    if shape is not None:
        _check_cost(shape, n_seeds=len(centres))
    radii, n_shrunk = shrink_overlapping_seeds(centres, radii)
    try:
        check_seed_radii(radii, spacing_um, what=what)
    except ValueError as exc:
        msg = str(exc) + (
            " (after shrinking overlapping seeds until they touch: seeds too close together)" if n_shrunk else ""
        )
        raise InputError(msg) from None
    if n_shrunk:
        warnings.warn(f"{n_shrunk} overlapping seed sphere(s) shrunk until they touch", InputWarning, stacklevel=3)
    return geometry.seed_spheres(centres, radii, edge_um=edge_um)


def _seed_arrays(data):
    centres, radii = data
    c = np.asarray(centres, dtype=np.float64).reshape(-1, 3)
    if len(c) == 0:
        raise InputError("no seeds: add one point per cell")
    if not np.all(np.isfinite(c)):
        raise InputError("seed coordinates must be finite")
    if radii is None:
        return c, None
    r = np.asarray(radii, dtype=np.float64).reshape(-1)
    if r.shape != (len(c),) or not np.all(np.isfinite(r) & (r > 0)):
        raise InputError("give one positive finite radius per seed")
    return c, r


def _label_array(data, shape):
    lab = np.asarray(data)
    if lab.shape != tuple(shape):
        raise InputError(f"the label image has shape {lab.shape} but the image is {tuple(shape)}")
    if not np.issubdtype(lab.dtype, np.integer) and np.any(lab != np.round(lab)):
        raise InputError("the label image must hold non-negative integer labels")
    lab = lab.astype(np.int32)
    if np.any(lab < 0):
        raise InputError("the label image must hold non-negative integer labels")
    if not lab.any():
        raise InputError("the label image has no labelled voxels")
    return lab
