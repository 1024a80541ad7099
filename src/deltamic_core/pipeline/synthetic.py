"""Synthetic images of known meshes: the one render-with-noise, surface distances, and the
``deltamic fit --target-mesh`` benchmark (fit a sphere to the image of a known mesh).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .errors import InputError


def render_mesh_image(
    mesh,
    shape,
    spacing_um,
    psf,
    origin_um=(0.0, 0.0, 0.0),
    *,
    noise="none",
    photons=100.0,
    background=0.0,
    seed=0,
    device="cpu",
    backend="auto",
    membrane_weight=1.0,
    volume_weight=0.0,
) -> np.ndarray:
    """Image of ``mesh`` (float32 (Z, Y, X)): its membranes times ``membrane_weight`` plus its
    cells' interiors at ``volume_weight`` per um (the fit's model of a stain, see
    ``pipeline.job.stain_weights``); with Poisson noise scaled to ``photons`` at the peak."""
    import torch

    from ..fit.fitter import volume_face_weights
    from ..render import Renderer

    r = Renderer(tuple(shape), tuple(spacing_um), psf, tuple(origin_um), backend=backend, device=device)
    verts = torch.as_tensor(mesh.verts, dtype=torch.float32, device=device)
    faces = torch.as_tensor(mesh.faces, dtype=torch.int64, device=device)
    weights = torch.as_tensor(float(membrane_weight) * mesh.face_intensity(), dtype=torch.float32, device=device)
    volume = 0.0
    if volume_weight:
        volume = torch.as_tensor(float(volume_weight) * volume_face_weights(mesh), dtype=torch.float32, device=device)
    with torch.no_grad():
        img = r.render(verts, faces, weights, volume_weight=volume).cpu().numpy().astype(np.float64)
    # ringing of the band-limited render leaves tiny negative values: an intensity is >= 0
    img = np.clip(img, 0.0, None)
    if noise == "poisson":
        peak = float(img.max())
        if peak <= 0:
            raise InputError("the rendered image is empty (is the mesh inside the image?)")
        lam = img * (photons / peak) + background
        img = np.random.default_rng(seed).poisson(lam).astype(np.float64)
    elif background:
        img = img + background
    return img.astype(np.float32)


def render_to_file(
    mesh_path,
    out,
    *,
    shape,
    spacing_um,
    psf,
    origin_um=(0.0, 0.0, 0.0),
    mesh_units=None,
    overwrite=False,
    noise="none",
    photons=100.0,
    background=0.0,
    seed=0,
    device="cpu",
    backend="auto",
    stain="membrane",
) -> dict:
    """``deltamic render``: the image of the mesh file ``mesh_path`` through ``psf`` (a
    :class:`~deltamic_core.pipeline.PSFSpec`) written to the TIFF ``out``, everything checked
    first; ``stain`` as ``--stain`` of a fit (membrane, interior or both). Returns {"out", "n_faces", "psf" (its description), "seconds"}."""
    import time

    from .. import io as dio
    from .._checks import check_spacing
    from ..geometry.validate import total_area
    from ..io.outdir import OutputError, check_output_file
    from .inputs import check_inside, read_mesh_file
    from .job import stain_weights
    from .psfspec import make_psf
    from .run import check_device, check_psf_resolved

    try:
        out = check_output_file(
            out, overwrite=overwrite, inputs=[mesh_path], option="--out", suffixes=(".tif", ".tiff")
        )
    except OutputError as exc:
        raise InputError(str(exc)) from None
    spacing = check_spacing(spacing_um, "--spacing")
    stain_kw = {k: v for k, v in stain_weights(stain).items() if k in ("membrane_weight", "volume_weight")}
    check_device(device, backend)
    if background < 0 or not math.isfinite(background):
        raise InputError(f"--background must be >= 0, got {background}")
    mesh = read_mesh_file(mesh_path, spacing, mesh_units, what="MESH")
    check_inside(mesh.verts.min(0), mesh.verts.max(0), shape, spacing, origin_um, what=f"MESH {mesh_path!r}")
    if not total_area(mesh) > 0:
        raise InputError(f"MESH {mesh_path!r} has no area (all its triangles are degenerate): the image would be empty")
    model = make_psf(psf, spacing)
    check_psf_resolved(model, spacing)
    t0 = time.perf_counter()
    kw = dict(noise=noise, photons=photons, background=background, seed=seed, device=device, backend=backend)
    kw.update(stain_kw)
    img = render_mesh_image(mesh, shape, spacing, model, origin_um, **kw)
    if not (np.all(np.isfinite(img)) and float(img.max()) > 0):
        raise InputError(f"the rendered image of MESH {mesh_path!r} is empty (is the mesh inside --shape, --origin?)")
    dio.write_tiff(out, img, spacing)
    return {"out": out, "n_faces": len(mesh.faces), "psf": model.describe(), "seconds": time.perf_counter() - t0}


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
    return {
        "mean_um": float(both.mean()),
        "rms_um": float(np.sqrt((both**2).mean())),
        "hausdorff_um": float(max(dab.max(), dba.max())),
        "a_to_b_mean_um": float(dab.mean()),
        "b_to_a_mean_um": float(dba.mean()),
    }


def place_target(mesh, size_um=None, spacing_um=None, shape=None, margin_voxels: float = 6.0):
    """Scale a toy mesh (largest extent -> ``size_um``) and centre it in an image box.

    Defaults: the mesh as it is (in um); an isotropic spacing putting 32 voxels across the
    largest extent; a shape holding the mesh plus ``margin_voxels`` (or 4 PSF sigmas) per side.
    Returns ``(mesh, spacing_um, shape)``; the mesh is in the image frame.
    """
    from .._checks import check_shape, check_spacing

    v = mesh.verts.astype(np.float64)
    lo, hi = v.min(0), v.max(0)
    ext = float((hi - lo).max())
    if not ext > 0:
        raise InputError("--target-mesh is degenerate (zero extent)")
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


def sphere_of_same_volume(mesh):
    """The sphere (centre at the volume centroid, same volume) of a one-cell mesh, as a Mesh."""
    from .. import geometry

    row = geometry.measure(mesh).rows()[0]
    vol = abs(row["volume_um3"])
    centroid = np.array([row["centroid_z_um"], row["centroid_y_um"], row["centroid_x_um"]])
    radius = (3.0 * vol / (4.0 * math.pi)) ** (1.0 / 3.0)
    return centroid, radius, vol


def fit_target(
    job,
    target_path: str,
    *,
    mesh_units: str | None = None,
    size_um=None,
    shape=None,
    noise: str = "none",
    photons: float = 100.0,
    seed: int = 0,
):
    """Render the mesh in ``target_path``, fit a sphere of the same volume to it with the
    options of ``job``, write ``job.out`` (plus ``image.tif``, ``target.ply`` and the surface
    distances in the report). Returns ``(result, report)``."""
    from .. import geometry
    from .. import io as dio
    from .inputs import check_inside, read_mesh_file
    from .outputs import check_replaceable
    from .psfspec import make_psf
    from .run import check_device, fit_and_write

    check_replaceable(job.out, overwrite=job.overwrite, inputs=[target_path])
    check_device(job.device, job.backend)
    raw = read_mesh_file(target_path, job.spacing_um or (1.0, 1.0, 1.0), mesh_units, what="--target-mesh")
    from .inputs import checked_cells

    raw = checked_cells(raw, f"--target-mesh {str(target_path)!r}")  # closed cells: a true volume to compare
    target, spacing, shape = place_target(raw, size_um, job.spacing_um, shape)
    check_inside(
        target.verts.min(0),
        target.verts.max(0),
        shape,
        spacing,
        what="the target mesh",
        hint="enlarge --shape or reduce --target-size",
    )
    # the fit starts from the PSF that made the image (and refines it with --learn-psf)
    psf = make_psf(job.psf, spacing)
    config = job.fit_config()
    psf_truth = psf.as_dict()
    # the image of the stain the fit models (membrane, filled interior, or both)
    image = render_mesh_image(
        target,
        shape,
        spacing,
        psf,
        noise=noise,
        photons=photons,
        seed=seed,
        device=job.device,
        backend=job.backend,
        membrane_weight=config.membrane_weight,
        volume_weight=config.volume_weight,
    )
    centroid, radius, vol = sphere_of_same_volume(target)
    from .run import check_edge

    check_edge(job.edge_um, spacing)
    init = geometry.seed_spheres(centroid[None], np.array([radius]), edge_um=job.edge_um)

    def before_write(d: Path, res):
        dio.write_tiff(d / "image.tif", image, spacing)
        dio.write_mesh(d / "target.ply", target)
        dist = surface_distance(res.mesh, target)
        dist_init = surface_distance(init, target)
        vox = float(np.prod(spacing) ** (1.0 / 3.0))
        metrics = {
            **dist,
            "mean_voxels": dist["mean_um"] / vox,
            "hausdorff_voxels": dist["hausdorff_um"] / vox,
            "voxel_um": vox,
            "initial_sphere": dist_init,
        }
        size = float((target.verts.max(0) - target.verts.min(0)).max())
        return {
            "target": {
                "mesh": str(target_path),
                "size_um": size,
                "volume_um3": vol,
                "sphere_radius_um": radius,
                "psf_truth": psf_truth,
                "noise": noise,
                "photons": photons if noise == "poisson" else None,
                "shape": list(shape),
            },
            "surface_distance": metrics,
        }

    res, report, _ = fit_and_write(
        image,
        spacing,
        init,
        psf,
        config,
        job.out,
        command=job.command,
        extra={"input": None},
        progress=job.progress,
        before_write=before_write,
        overwrite=job.overwrite,
    )
    return res, report
