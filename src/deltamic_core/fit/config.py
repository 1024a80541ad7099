"""All the knobs of a fit in one validated dataclass."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch

from .optim import ADAM_KINDS
from .precondition import LAPLACIAN_KINDS

__all__ = ["FitConfig"]

LOSSES = ("mse", "poisson")
PHOTOMETRIC = ("solve", "learn")
PHOTOMETRIC_FIELDS = ("constant", "linear")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _pos(name, v, *, allow_zero=False):
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise TypeError(f"FitConfig.{name} must be a number, got {v!r}") from None
    if not math.isfinite(f) or f < 0 or (f == 0 and not allow_zero):
        raise ValueError(f"FitConfig.{name} must be {'>= 0' if allow_zero else '> 0'} and finite, got {v!r}")
    return f


def _int(name, v, lo):
    if isinstance(v, bool) or not isinstance(v, (int,)) and not (isinstance(v, float) and v.is_integer()):
        raise TypeError(f"FitConfig.{name} must be an integer, got {v!r}")
    if int(v) < lo:
        raise ValueError(f"FitConfig.{name} must be >= {lo}, got {v!r}")
    return int(v)


def _nonneg(name, v):
    return _pos(name, v, allow_zero=True)


def _int_at_least(lo):
    return lambda name, v: _int(name, v, lo)


def _at_most_one(name, v, *, interval="(0, 1]", allow_zero=False):
    f = _pos(name, v, allow_zero=allow_zero)
    if f > 1:
        raise ValueError(f"FitConfig.{name} must be in {interval}, got {f}")
    return f


def _unit_closed(name, v):
    return _at_most_one(name, v, interval="[0, 1]", allow_zero=True)


def _below_one(name, v):
    f = _pos(name, v)
    if f >= 1:
        raise ValueError(f"FitConfig.{name} must be in (0, 1), got {f}")
    return f


def _optional(check):
    return lambda name, v: None if v is None else check(name, v)


def _one_of(choices):
    def check(name, v):
        if v not in choices:
            raise ValueError(f"FitConfig.{name} must be one of {choices}, got {v!r}")
        return v

    return check


def _flag(name, v):
    if not isinstance(v, bool):
        raise TypeError(f"FitConfig.{name} must be True or False, got {v!r}")
    return v


def _string(name, v):
    if not isinstance(v, str):
        raise TypeError(f"FitConfig.{name} must be a string, got {v!r}")
    return v


def _betas(name, v):
    b = tuple(float(x) for x in v)
    if len(b) != 2 or not all(0 <= x < 1 for x in b):
        raise ValueError(f"FitConfig.{name} must be two numbers in [0, 1), got {v!r}")
    return b


def _percentiles(name, v):
    pc = tuple(float(x) for x in v)
    if len(pc) != 2 or not 0 <= pc[0] < pc[1] <= 100:
        raise ValueError(f"FitConfig.{name} must be (low, high) with 0 <= low < high <= 100, got {v!r}")
    return pc


def _device(name, v):
    try:
        torch.device(v)
    except (RuntimeError, TypeError):
        raise ValueError(f"FitConfig.{name} is not a valid torch device: {v!r}") from None
    return v


def _dtype(name, v):
    if isinstance(v, torch.dtype):
        v = {t: k for k, t in DTYPES.items()}.get(v, str(v))
    if v not in DTYPES:
        raise ValueError(f"FitConfig.{name} must be one of {tuple(DTYPES)}, got {v!r}")
    return v


def _levels(levels):
    lv = (levels,) if isinstance(levels, (int, float)) else levels
    try:
        lv = tuple(_int("levels", v, 1) for v in lv)
    except TypeError:
        raise TypeError(f"FitConfig.levels must be a sequence of positive integers, got {levels!r}") from None
    if not lv or lv[-1] != 1:
        raise ValueError(f"FitConfig.levels must be non-empty and end with 1 (full resolution), got {levels!r}")
    if any(a < b for a, b in zip(lv, lv[1:])):
        raise ValueError(f"FitConfig.levels must be non-increasing (coarse to fine), got {levels!r}")
    return lv


def _iterations(it, lv):
    """Iterations per level (checked ``levels`` ``lv``); None: 60 at factor >= 3, 40 at 2, 50 at 1."""
    if it is None:
        it = tuple(50 if f == 1 else (40 if f == 2 else 60) for f in lv)
    if isinstance(it, (list, tuple)):
        if len(it) != len(lv):
            raise ValueError(f"FitConfig.iterations has {len(it)} entries but there are {len(lv)} levels {lv}")
        it = tuple(_int("iterations", v, 0) for v in it)
    else:
        it = _int("iterations", it, 0)
    if (sum(it) if isinstance(it, tuple) else it * len(lv)) < 1:
        raise ValueError(
            f"FitConfig.iterations adds up to 0 over the levels {lv}: nothing would be fitted "
            "(give at least one iteration)"
        )
    return it


def _lambda_smooth(lam, lv):
    """One smoothing weight for every level, or one per level (checked ``levels`` ``lv``)."""
    if isinstance(lam, (list, tuple)):
        if len(lam) != len(lv):
            raise ValueError(f"FitConfig.lambda_smooth has {len(lam)} entries but there are {len(lv)} levels {lv}")
        return tuple(_nonneg("lambda_smooth", v) for v in lam)
    return _nonneg("lambda_smooth", lam)


def _something_rendered(cfg):
    if cfg.volume_weight == 0 and cfg.membrane_weight == 0:
        raise ValueError("FitConfig.membrane_weight and FitConfig.volume_weight are both 0: nothing to render")


def _volume_level_rule(cfg):
    if cfg.volume_level == "solve" and (cfg.membrane_weight == 0 or cfg.photometric != "solve"):
        raise ValueError(
            "FitConfig.volume_level='solve' needs a membrane (membrane_weight > 0) and photometric='solve'"
        )


def _remesh_has_edge(cfg):
    if cfg.remesh_every and cfg.target_edge_um is None:
        raise ValueError("FitConfig.remesh_every needs FitConfig.target_edge_um (the edge length to remesh to)")


# Every field after levels/iterations, in checking order: (name, check(name, value) -> value)
# or (None, rule(config)) for a rule between fields already checked.
_CHECKS = (
    ("lr", _pos),
    ("lr_final_factor", _at_most_one),
    ("refine_lr_factor", _at_most_one),
    ("lambda_fine_factor", _pos),
    ("p", _int_at_least(1)),
    ("laplacian", _one_of(LAPLACIAN_KINDS)),
    ("optimizer", _one_of(ADAM_KINDS)),
    ("betas", _betas),
    ("max_failures", _int_at_least(1)),
    ("min_lr_factor", _pos),
    ("rel_tol", _nonneg),
    ("patience", _int_at_least(1)),
    ("loss", _one_of(LOSSES)),
    ("alpha", _nonneg),
    ("weight_floor", _unit_closed),
    ("percentiles", _percentiles),
    ("poisson_floor", _pos),
    ("photometric", _one_of(PHOTOMETRIC)),
    ("photometric_lr", _pos),
    ("photometric_field", _one_of(PHOTOMETRIC_FIELDS)),
    ("volume_weight", _nonneg),
    ("membrane_weight", _nonneg),
    (None, _something_rendered),
    ("volume_level", _one_of(("fixed", "solve"))),
    (None, _volume_level_rule),
    ("learn_psf", _flag),
    ("psf_lr", _pos),
    ("band_update_every", _int_at_least(1)),
    ("target_edge_um", _optional(_pos)),
    ("fine_edge_voxels", _nonneg),
    ("remesh_every", _int_at_least(0)),
    (None, _remesh_has_edge),
    ("coarse_blur", _nonneg),
    ("reach_overlap", _unit_closed),
    ("share_membranes", _flag),
    ("contact_gap_um", _nonneg),
    ("merge_gap_um", _nonneg),
    ("merge_gap_axes", _one_of(("psf", "isotropic"))),
    ("zip_gap_sigmas", _nonneg),
    ("reshare_membranes", _one_of(("off", "new", "always"))),
    ("reshare_final_at", _unit_closed),
    ("rebuild_voxel", _nonneg),
    ("subdivide_final_at", _optional(_below_one)),
    ("subdivide_lambda_factor", _pos),
    ("tension", _nonneg),
    ("band_threshold", _below_one),
    ("backend", _string),
    ("device", _device),
    ("dtype", _dtype),
    ("fold_aliases", _flag),
    ("max_memory_bytes", _optional(_int_at_least(1))),
)


@dataclass
class FitConfig:
    """Settings of :class:`~deltamic_core.fit.Fitter`.

    Optimisation
    ------------
    iterations : int, tuple of int or None
        Iterations per coarse-to-fine level (an int applies to every level). None (default):
        by the level's factor, 60 at factor >= 3, 40 at factor 2 and 50 at full resolution:
        the cheap blurred coarse levels do the bulk of the shape change, but their blur
        (``coarse_blur``) limits them to about a voxel: the sub-voxel accuracy is made at full
        resolution (on the independent benchmark, ``benchmarks/bench_accuracy.py --tiny``, 10
        iterations there left the surface 1.4x further from the truth than watershed's, 50
        with the schedule below 0.34x). ``rel_tol`` ends a level early once its loss stalls.
        Factor 2 had 120: 40 cost 17-36% less CPU on the independent benchmark (agg4-fine 51 ->
        42 s, agg6-coarse 36 -> 23 s, agg8-fine 76 -> 65 s, tiny 22 -> 18 s) at about the same
        accuracy (mean distance -0.004 to +0.004 xy voxel; embryo3-fine 0.088 -> 0.092).
        Factor >= 3 had 80: 60 cost 7% less CPU on agg4-fine (whole `deltamic fit`, 1 thread,
        17.3 -> 16.1 s) and, on the independent benchmark (``--fit-psf gaussian``, 1 thread,
        2026-12-05), mean distance / HD95 / worst volume / worst contact went agg4-fine 0.037 /
        0.11 / 0.04% / 6.8% -> 0.038 / 0.11 / 0.04% / 4.6%, embryo3-fine 0.062 / 0.19 / 0.01% /
        11.1% -> 0.063 / 0.20 / 0.01% / 7.6%, tiny-agg3 0.056 / 0.16 / 0.05% / 0.8% -> 0.057 /
        0.16 / 0.05% / 1.6% (60 / 30 / 50: tiny-agg3's contact 2.4%, not taken).
    lr : float
        Step size of the vertex optimiser in voxels of the current level per iteration (the
        steps are Adam-normalised, so this is roughly how far the surface moves per step at
        the start; it decays with ``lr_final_factor``).
    lr_final_factor : float in (0, 1]
        Cosine decay of the step size within each level down to ``lr * lr_final_factor``.
    refine_lr_factor : float in (0, 1]
        Levels after the first start from ``lr * refine_lr_factor`` (except the level after a
        ``share_membranes`` rebuild, whose mesh is only voxel-accurate, which starts at ``lr``).
        Default 1: full-resolution steps of ``lr`` voxels converge in half the iterations that
        0.5 needs, without rollbacks, on the independent benchmark.
    lambda_smooth, p, laplacian :
        Large-steps preconditioner ``(I + lambda_smooth L)^p`` with ``L`` the ``laplacian``
        (``lambda_smooth`` one number, or one per level)
    lambda_fine_factor : float > 0
        With one ``lambda_smooth``, the full-resolution level uses ``lambda_smooth x
        lambda_fine_factor``: the coarse levels travel with a stiff mesh, the last level
        resolves what the full-resolution data show.
        ("uniform", "cotangent" or "robust"; "robust" works on non-manifold multi-cell meshes,
        "uniform" on anything).
    optimizer : {"uniform", "vector"}
        Second-moment flavour of the vertex Adam (see :mod:`deltamic_core.fit.optim`).
    betas : (float, float)
    max_failures : int
        Consecutive rolled-back steps (NaN/Inf loss, gradient or vertices) tolerated before
        the fit raises; each halves the step size.
    min_lr_factor : float
        The step size is never halved below ``lr * min_lr_factor`` (the fit raises instead).
    rel_tol : float
        Early stop of a level when the loss improved by less than ``rel_tol`` (relative) over
        the last ``patience`` iterations (default: 0.5% over 20); 0 disables it.
    patience : int

    Data term
    ---------
    loss : {"mse", "poisson"}
        Intensity-weighted MSE on the image normalised by robust percentiles, or Poisson
        negative log-likelihood on the raw image (counts).
    alpha : float >= 0
        Intensity weighting exponent (0 = plain MSE). weight = floor + (1 - floor) * n^alpha.
    weight_floor : float in [0, 1]
    percentiles : (low, high)
        Robust range used to normalise the image (and the weights).
    poisson_floor : float
        Lower bound of the expected counts in the Poisson loss (counts).
    photometric : {"solve", "learn"}
        Gain and background eliminated in closed form each step (weighted least squares,
        positive gain) or learnt as parameters with ``photometric_lr``.
    photometric_lr : float
    photometric_field : {"linear", "constant"}
        The solved gain and background: a gain linear in depth (the attenuation of the emitted
        light along z, bleaching along the stack) and a background plane in (z, y, x)
        ("linear", the default, ``losses.solve_photometric_field``; with ``photometric="solve"``
        only, a learnt gain and background stay constant), or constants ("constant", before
        2026-12-04). Measured on bench_accuracy (1 thread, mean d xy voxel / worst volume):
        elongated-fine (widefield, ``--psf gibson-lanni --vectorial``) 0.466 / 0.77% -> 0.195 /
        0.00%; nonconvex-coarse (widefield scalar) 0.214 / 0.68% -> 0.204 / 0.52%; agg4-fine
        (confocal, ``--psf gaussian --learn-psf``) 0.045 / 0.27% -> 0.038 / 0.04%; embryo3-coarse
        0.071 / 0.10% -> 0.067 / 0.08% (its worst contact 5.8% -> 11.0%).
    volume_weight : float
        Weight of the enclosed-volume (cytoplasm) signal relative to the membrane, passed to
        the renderer as signed per-face weights built from the labels (every cell filled,
        whatever the winding convention; see ``fit.fitter.volume_face_weights``).
    membrane_weight : float
        Multiplies the membrane (surface) intensity of every face; 0 with ``volume_weight`` > 0
        models interior staining (nuclei, cytoplasmic dyes, droplets).
    volume_level : {"fixed", "solve"}
        "solve" (membrane plus cytoplasm, ``--stain both``): the cytoplasm level relative to
        the membrane is not ``volume_weight`` but solved every step with the gain and the
        background (three-parameter weighted least squares on the membrane and volume images,
        levels >= 0); the fitted level is ``FitResult.volume_level`` (per um).

    PSF
    ---
    learn_psf : bool
        Optimise the PSF model's parameters too (own Adam, ``psf_lr``, on their internal
        log/physical parametrisation).
    psf_lr : float
    band_update_every : int
        With a learnt PSF, rebuild the renderer's frequency band every this many iterations.

    Mesh and levels
    ---------------
    levels : tuple of int
        Coarse-to-fine image downsampling factors, e.g. (4, 2, 1) (default): block-average by
        4 first, then by 2, then the full image. Must end with 1.
    target_edge_um : float or None
        Target edge length of isotropic remeshing at full resolution (scaled by the level's
        factor on coarse levels). None keeps the input mesh's tessellation.
    fine_edge_voxels : float >= 0
        With ``target_edge_um`` None, the coarsest edge of a membrane fit's (``volume_weight``
        0) full-resolution mesh, in units of the smallest voxel: the shared-membrane rebuilds
        and the full-resolution level remesh to it where the mesh is coarser (seed spheres are
        meshed by their radii and grow with the cells: ~1.44 um edges on the bundled embryo,
        coarser than what 0.25 um voxels resolve); 0 keeps the tessellation. Measured 2026-12-04
        (``bench_accuracy.py``, ``--fit-psf gaussian``, 1 thread, load ~2; mean distance xy voxel
        / worst volume / worst contact, 4 vs 0): embryo3-fine 0.062 / 0.01% / 11.1% vs 0.089 /
        0.04% / 3.1% (watershed 0.238), 29 vs 26 s; agg4-fine 0.037 / 0.04% / 6.8% vs 0.038 /
        0.04% / 6.0%; elongated-fine (widefield, ``--fit-psf physical``) 0.206 / 0.05% vs 0.195
        / 0.00%; agg8-fine, tiny-agg3 and the 0.5 um-voxel cases unchanged (their meshes are
        already that fine, or 4 voxels is coarser than them).
    remesh_every : int
        Remesh every this many iterations within a level (0 = only when changing level).
    coarse_blur : float >= 0
        Scale space on coarse levels: the block-averaged image and the model are both blurred
        by an extra isotropic Gaussian of standard deviation ``coarse_blur`` x the level's
        voxel size (factor x the smallest spacing). The model stays exact for the blurred
        data, and the data term then reaches membranes a few of those voxels away from the
        current surface (a seed sphere is typically micrometres off, far beyond the reach of
        a sub-micrometre PSF). 0 = plain block averaging. Never applied at full resolution,
        and capped at 1/16 of the image's smallest side (the blur extends the image beyond
        its borders by their values, a guess that must stay a small part of the box).
        Default 1.0 (with ``reach_overlap``: the reach follows the seeds).
    reach_overlap : float in [0, 1]
        How far a coarse level's data term reaches is set by its blur, but how far it must
        reach is set by how far the initial surfaces are from the membranes (seed spheres of
        0.6 x the cell radius on 0.25 um voxels sit ~2.5 um inside them): where the model's
        membranes lie only on dark data, the solved gain collapses to ~0, the loss is flat and
        the fit stays at its seeds. So before each coarse level (and before it narrows) the
        correlation of the current model's image with the data is measured in every cell's
        region (the voxels nearest its sphere); while some cell's is below ``reach_overlap``
        the blur grows by 1.5x (up to an eighth of the image's smallest side). A level that
        starts wider narrows back to its own blur (or the narrowest that still reaches) at its
        loss plateau or half-way through its iterations. When even the widest blur does not
        reach a cell the fit warns, naming the cells. 0 = off (the fixed ``coarse_blur``).
        Default 0.1. Measured on the independent benchmark (``bench_accuracy.py --fit-psf
        gaussian``): embryo3-fine's seeds need 2.25 um on its 1 um first level (correlations
        -0.12 to -0.14 at 1 um, 0.11-0.27 at 2.25 um); the other cases' own 1.0 blur reaches
        (0.16-0.58), agg8-fine's cell 7 (0.05) takes 1.5 um.
    share_membranes : bool
        When the first level ends, rebuild a mesh of separate closed cells (e.g. seed spheres)
        whose cells now touch as one multi-material mesh: the current cells are rasterised on
        the full-resolution grid and re-triangulated by multi-label surface nets, so the
        membrane between two touching cells becomes one sheet of faces labelled (a, b) with
        intensity 2 (see :func:`deltamic_core.geometry.meshes_from_labels` with
        ``shared=True``). Two separate surfaces that should coincide on a shared membrane are
        nearly degenerate for a blurred image (two sheets of intensity 1 a PSF width apart look
        like one of intensity 2), so they drift into each other and the cells overlap; one
        sheet cannot. Meshes that already have shared faces, single cells and cells that do
        not touch are left as they are.
    contact_gap_um : float >= 0
        At that rebuild, background thinner than this between two cells (um) becomes part of
        their contact (given to the nearer cell): after the blurred first level touching cells
        often keep a thin gap, which would otherwise stay two sheets. 0 = only cells whose
        voxels touch share a membrane.
    merge_gap_um : float >= 0
        At every rebuild, decide each contact by the current surfaces instead of by voxel
        adjacency: two cells share a membrane where their surfaces are within this (um; exact
        signed distances, overlaps included) and not where they are further apart, so that a
        near-touching double sheet is zipped and a shared sheet stops at the triple junction
        instead of running a voxel into the wedge between the cells
        (:func:`deltamic_core.geometry.contact_labels_by_gap`). Default 0.1 um: two membranes
        closer than that image as one through any light microscope. 0 = voxel adjacency only.
    merge_gap_axes : {"psf", "isotropic"}
        "psf": ``merge_gap_um`` holds along the PSF's narrowest axis and grows with
        its width along the others (the gap is measured in coordinates divided by the PSF's
        standard deviations relative to the smallest; the voxel size for a PSF model without
        them): a confocal's axial PSF is ~2.6 times its lateral one, so two sheets 0.26 um
        apart along z image like one as much as two 0.1 um apart laterally. Measured on the
        independent benchmark: axial contacts (normals along z) were left as two free sheets
        0.1-0.3 um apart by the fit and lost in part or entirely (agg8-fine 4-8, agg4-fine
        3-4). "isotropic" (default): the same ``merge_gap_um`` along every axis. "psf"
        measured (with ``rebuild_voxel`` 0.5, same run): agg4-fine 3-4 -68.8% -> +31.3%
        (worst contact 69 -> 31%), tiny-agg3 -0.8 / -2.9% -> +1.2 / -0.6%, but agg8-fine 4-8
        still lost (its sheets end 0.2-0.3 um apart) and embryo3-fine 2-3 +1.1 -> -6.3%, so
        it is not the default.
    zip_gap_sigmas : float >= 0
        At every rebuild, two cells that do not share a membrane yet (after ``merge_gap_um``)
        become a contact where their surfaces are closer than this many of the PSF's standard
        deviations along the direction they face each other (the gap measured in coordinates
        divided by the PSF's sigma per axis; a Gaussian's sigma, a measured PSF's FWHM / 2.355,
        other models: off). Two sheets closer than about 2 sigma image as one peak, so the data
        cannot pull them together: on the independent benchmark agg8-fine's axial 4-8 contact
        stayed two sheets 0.41 um (1.0 sigma_z) apart to the end of the fit, the contact lost
        and both cells 0.2 um short there. The contacts the mesh has keep ``merge_gap_um``'s
        rim, except those this rule made, which keep it at later rebuilds (a contact zipped
        while its sheets were still partly further apart grows to the rest of them). 0 = off.
        Not at the first rebuild (the blurred first level's surfaces). Default 0 (off):
        measured on the independent benchmark (``--fit-psf gaussian``, 1 thread, load 3-18,
        2026-12-04; mean d xy voxel / worst volume / worst contact), 2.0 vs off: agg8-fine
        0.072 / 1.72% / 100% (4-8 lost) -> 0.056 / 0.74% / 6.2% (4-8 -0.8%, HD95 0.81 -> 0.20),
        but tiny-agg3 0.061 / 0.05% / 1.7% -> 0.064 / 0.05% / 0.6% (a 0.8 um^2 contact between
        cells 1 and 2, which the truth has not) and agg6-coarse's 1-5 contact -22% -> +32%
        (0.057 / 0.65% -> 0.057 / 0.66%); agg4-fine and embryo3-coarse unchanged. 3 sigma:
        agg8-fine 0.058 / 0.73% / 4-8 +2.5%; 2 sigma without the later rebuilds keeping the rule:
        0.057 / 0.84% / 4-8 -19.6% (zipped half-way through the last level while 0.45-0.6 um
        apart).
    reshare_membranes : {"off", "new", "always"}
        At every later level change, rebuild again (with ``contact_gap_um`` and
        ``merge_gap_um``): "new" when the rasterised cells touch as a pair that is not yet a
        contact of the mesh (two cells whose gap closed during the level), "always" (default)
        whenever cells touch (this also zips two neighbours' free membranes that run together
        into their shared one, and moves every contact's rim to where the current surfaces
        part). The rebuilt mesh is then moved back onto the current, sub-voxel surfaces
        (:func:`deltamic_core.geometry.snap_to_cells`).
    reshare_final_at : float in [0, 1]
        Rebuild once more after this fraction of the full-resolution level's iterations (as
        "always"; default 0.5). At the level change the surfaces are only as accurate as the
        coarser level made them, so near-touching sheets can still be further apart than
        ``merge_gap_um``; half-way through the last level they are as close as the data make
        them. 0 = off.
    rebuild_voxel : float >= 0
        Every shared-membrane rebuild rasterises the cells on voxels of ``max(image voxel,
        rebuild_voxel x edge)`` per axis (edge = ``target_edge_um``, else the current mesh's
        mean edge), not on the image's: the new mesh is remeshed to that edge anyway and then
        snapped back onto the current sub-voxel surfaces, and the remesher's input (the surface
        nets of the label image) shrinks with the voxel area. 0 (default) = the image grid.
        0.5 (two voxels per edge) cuts a rebuild's CPU 3.3-4.0 -> 0.9-1.1 s on agg4-fine
        (remesh input 86k -> 26k faces) but, measured on the independent benchmark
        (``--fit-psf gaussian``, 1 thread, same run), the fits came out less close:
        embryo3-fine 0.092 -> 0.115 xy voxel, agg4-fine 0.045 -> 0.050 (tiny-agg3 0.063 both,
        agg8-fine 0.072 -> 0.074), so it stays off.
    subdivide_final_at : float in (0, 1) or None
        After this fraction of the full-resolution level's iterations (after that step's
        ``reshare_final_at`` rebuild when both fall on the same step), split every triangle in
        four at its edge midpoints (:func:`deltamic_core.geometry.subdivide`): the rest of the
        fit moves a mesh of half the edge length (no remesher involved). Without
        ``target_edge_um`` the mesh's edge is set by the seed spheres (~1.5 um on the 0.25 um
        benchmark images), and facets that size cannot follow a creased surface closer than
        their chords allow: the bundled embryo's true cells (a real segmentation, 1.6 um
        facets) remeshed to 1.46 um edges with every vertex on the true surface are 0.099 xy
        voxel from it, at 1.0 um 0.057, at 0.7 um 0.032. None (default) = off. Measured on the
        independent benchmark (``bench_accuracy.py --fit-psf gaussian``, 1 thread, load 9-22,
        2026-12-04), mean distance in xy voxels with 0.5, per ``subdivide_lambda_factor``:
        embryo3-fine 0.091 (off) -> 0.068 (1) / 0.076 (2) / 0.088 (4); agg4-fine 0.045 ->
        0.049 / 0.045 / 0.044; tiny-agg3 0.061 -> 0.069 (2) / 0.061 (4). The embryo's creased
        cells gain, the aggregates' smooth ones do not and lose to the noise a softer mesh
        follows, so it stays off. A fit's CPU grows ~14% (tiny-agg3, factor 1: 9.5 -> 10.8 s).
    subdivide_lambda_factor : float > 0
        The subdivided mesh's preconditioner uses the level's lambda x this (default 2). The
        uniform Laplacian smooths over ~sqrt(lambda) edges, so 1 halves the smoothing length in
        um along with the edges and 4 keeps it.
    tension : float >= 0
        A surface-tension prior: the loss gets ``tension x L0 x A / A0`` added, A the total
        membrane area (a shared membrane counted once), A0 and L0 the area and the data loss at
        each level's first step (so ``tension`` is the relative loss of a relative area change).
        Two neighbours' free membranes that run together along their contact image exactly
        like their shared membrane, so the data cannot move the junction over them; the area
        can: zipping them into the shared sheet removes one of the two. Only on meshes that
        have shared membranes (before the cells touch it would hold them apart). 0 = off.

    Rendering
    ---------
    band_threshold, backend, device, dtype :
        Passed to :class:`deltamic_core.render.Renderer`. ``dtype`` is "float32" or "float64".
    fold_aliases : bool
        Exact point sampling of a PSF that the voxel grid undersamples (the renderer folds the
        frequencies beyond Nyquist) at full resolution; coarse levels never fold.
    max_memory_bytes : int or None
        Refuse renderer plans larger than this.
    """

    iterations: int | tuple | None = None
    lr: float = 0.3
    lr_final_factor: float = 0.1
    refine_lr_factor: float = 1.0
    lambda_smooth: float | tuple = 3.0
    lambda_fine_factor: float = 1.0 / 3.0
    p: int = 1
    laplacian: str = "uniform"
    optimizer: str = "vector"
    betas: tuple = (0.8, 0.999)
    max_failures: int = 8
    min_lr_factor: float = 1e-3
    rel_tol: float = 0.005
    patience: int = 20

    loss: str = "mse"
    alpha: float = 0.0
    weight_floor: float = 0.05
    percentiles: tuple = (1.0, 99.5)
    poisson_floor: float = 1e-3
    photometric: str = "solve"
    photometric_lr: float = 0.02
    photometric_field: str = "linear"
    volume_weight: float = 0.0
    membrane_weight: float = 1.0
    volume_level: str = "fixed"

    learn_psf: bool = False
    psf_lr: float = 0.01
    band_update_every: int = 10

    levels: tuple = (4, 2, 1)
    target_edge_um: float | None = None
    fine_edge_voxels: float = 4.0
    remesh_every: int = 0
    coarse_blur: float = 1.0
    reach_overlap: float = 0.1
    share_membranes: bool = True
    contact_gap_um: float = 0.0
    merge_gap_um: float = 0.1
    merge_gap_axes: str = "isotropic"
    zip_gap_sigmas: float = 0.0
    reshare_membranes: str = "always"
    reshare_final_at: float = 0.5
    rebuild_voxel: float = 0.0
    subdivide_final_at: float | None = None
    subdivide_lambda_factor: float = 2.0
    tension: float = 0.0

    band_threshold: float = 1e-3
    backend: str = "auto"
    device: str = "cpu"
    dtype: str = "float32"
    fold_aliases: bool = True
    max_memory_bytes: int | None = None

    def __post_init__(self):
        self.levels = _levels(self.levels)
        self.iterations = _iterations(self.iterations, self.levels)
        self.lambda_smooth = _lambda_smooth(self.lambda_smooth, self.levels)
        for name, check in _CHECKS:
            if name is None:
                check(self)  # a rule between fields, at its place in the order
            else:
                setattr(self, name, check(name, getattr(self, name)))

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def lambda_for_level(self, index: int) -> float:
        """The preconditioner's lambda on level ``index``: the per-level value when
        ``lambda_smooth`` is a tuple, else ``lambda_smooth`` (x ``lambda_fine_factor`` at full
        resolution)."""
        lam = self.lambda_smooth
        if isinstance(lam, tuple):
            return lam[index]
        return lam * self.lambda_fine_factor if self.levels[index] == 1 else lam

    def iterations_for_level(self, index: int) -> int:
        it = self.iterations
        return it[index] if isinstance(it, tuple) else it

    @property
    def total_iterations(self) -> int:
        return sum(self.iterations_for_level(i) for i in range(len(self.levels)))

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> FitConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown FitConfig fields: {unknown}")
        return cls(**d)
