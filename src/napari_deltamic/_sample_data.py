"""Sample data: a synthetic 3-cell embryo rendered by the core from the bundled mesh.

The stack is the membrane density of ``deltamic_core/data/Sample01_007.rec`` (shared membranes
twice as bright as outer ones) blurred by an anisotropic Gaussian PSF, sampled on an anisotropic
grid, with Poisson noise from a fixed seed. Rendering takes a few seconds, so the result is
cached on disk (``$NAPARI_DELTAMIC_CACHE`` or the user cache dir), keyed by every parameter.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np

from ._layers import SPACING_KEY, UNITS_ZYX, mesh_to_layer_data

#: every parameter that changes the rendered stack (the cache key hashes all of them)
EMBRYO_PARAMS = {
    "mesh": "Sample01_007.rec",
    "mesh_unit_um": 0.1,  # the .rec is in voxel units; 0.1 um per unit gives ~12 x 20 x 9 um
    "spacing_um": (0.6, 0.25, 0.25),  # anisotropic: z step 2.4x the pixel size
    # Gaussian PSF elongated along the optical axis, sampled above Nyquist; the render cost is
    # (band frequencies) x (faces) and the band shrinks as 1 / (sz sy sx)
    "sigma_um": (1.0, 0.45, 0.45),
    "margin_um": 1.5,  # empty border around the embryo
    "peak_photons": 60.0,  # expected counts at the brightest voxel
    "background_photons": 5.0,
    "seed": 7,
    "version": 1,  # bump when the rendering recipe changes
}


def cache_dir() -> Path:
    """Directory for cached sample stacks (``$NAPARI_DELTAMIC_CACHE`` overrides)."""
    env = os.environ.get("NAPARI_DELTAMIC_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("napari-deltamic"))


def _cache_key(params: dict) -> str:
    blob = json.dumps(params, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _save_npz_atomic(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp.npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def embryo_mesh(params: dict = EMBRYO_PARAMS):
    """The bundled ground-truth mesh in um (z, y, x), shifted so the box starts at the origin.

    The segmentation's faces are re-wound to agree with their labels (``orient_outward``; about
    3% of them disagree in the file), so the layer can be measured and edited like a fit result.

    Returns
    -------
    mesh : deltamic_core.mesh.Mesh
        Vertices in um, with the embryo's bounding box starting at ``margin_um`` on every axis.
    shape : (3,) tuple of int
        The stack shape (Z, Y, X) that holds it with the margin.
    """
    from deltamic_core.geometry.ops import orient_outward
    from deltamic_core.io import read_mesh

    ref = resources.files("deltamic_core") / "data" / params["mesh"]
    with resources.as_file(ref) as path:
        mesh = read_mesh(path, spacing_um=(params["mesh_unit_um"],) * 3)
    spacing = np.asarray(params["spacing_um"], dtype=np.float64)
    lo, hi = mesh.verts.min(axis=0), mesh.verts.max(axis=0)
    verts = mesh.verts - lo + params["margin_um"]
    shape = tuple(int(n) for n in np.ceil((hi - lo + 2 * params["margin_um"]) / spacing).astype(int) + 1)
    return orient_outward(mesh.copy(verts=verts)), shape


def synthetic_embryo(params: dict = EMBRYO_PARAMS, *, use_cache: bool = True) -> dict:
    """Render (or load from the cache) the synthetic embryo.

    Returns
    -------
    dict with
        ``image`` : (Z, Y, X) float32 photon counts;
        ``spacing_um`` : (3,) voxel size (z, y, x) in um;
        ``mesh`` : the ground-truth Mesh in um;
        ``centroids_um`` : (n_cells, 3) cell centroids in um (z, y, x);
        ``params`` : the parameters used.
    """
    mesh, shape = embryo_mesh(params)
    spacing = tuple(float(s) for s in params["spacing_um"])
    path = cache_dir() / f"embryo_{_cache_key(params)}.npz"
    image = None
    if use_cache and path.exists():
        try:
            with np.load(path) as z:
                image = z["image"]
            if image.shape != shape:
                image = None
        except (OSError, ValueError, KeyError):
            image = None  # a corrupt cache entry is simply re-rendered
    if image is None:
        image = _render_embryo(mesh, shape, spacing, params)
        if use_cache:
            try:
                _save_npz_atomic(path, image=image)
            except OSError:
                pass  # a read-only cache must not prevent loading the sample
    from deltamic_core.geometry import measure

    centroids = np.asarray(measure(mesh)["centroid"], dtype=np.float64).reshape(-1, 3)
    return {"image": image, "spacing_um": spacing, "mesh": mesh, "centroids_um": centroids, "params": dict(params)}


def _render_embryo(mesh, shape, spacing, params) -> np.ndarray:
    from deltamic_core.pipeline import render_mesh_image
    from deltamic_core.psf import GaussianPSF

    return render_mesh_image(
        mesh,
        shape,
        spacing,
        GaussianPSF(sigma_um=tuple(params["sigma_um"])),
        noise="poisson",
        photons=params["peak_photons"],
        background=params["background_photons"],
        seed=params["seed"],
    )


def make_sample_data() -> list[tuple]:
    """napari sample-data contribution: image (scale = spacing), ground-truth Surface, seeds."""
    emb = synthetic_embryo()
    spacing = emb["spacing_um"]
    image = (
        emb["image"],
        {
            "name": "embryo (synthetic)",
            "scale": spacing,
            "axis_labels": ("z", "y", "x"),
            "units": UNITS_ZYX,
            "metadata": {SPACING_KEY: spacing, "sample_params": emb["params"]},
            "colormap": "gray",
        },
        "image",
    )
    truth = mesh_to_layer_data(emb["mesh"], "ground truth mesh", extra_metadata={"voxel_units": False})
    truth[1]["visible"] = False  # the point of the sample is to find it
    seeds = (
        emb["centroids_um"],
        {"name": "seeds", "units": UNITS_ZYX, "size": 1.5, "face_color": "yellow", "metadata": {"unit": "um"}},
        "points",
    )
    return [image, truth, seeds]
