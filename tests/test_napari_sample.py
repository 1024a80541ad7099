"""The sample-data contribution: the synthetic 3-cell embryo rendered by the core."""

from __future__ import annotations

import numpy as np
import pytest

from napari_deltamic import _sample_data


@pytest.mark.slow
def test_sample_layers_shapes_and_scale(sample_cache):
    layers = _sample_data.make_sample_data()
    assert [kind for _, _, kind in layers] == ["image", "surface", "points"]
    (image, ikw, _), (surface, skw, _), (points, pkw, _) = layers
    params = _sample_data.EMBRYO_PARAMS
    assert image.ndim == 3 and image.dtype == np.float32
    assert tuple(ikw["scale"]) == tuple(params["spacing_um"])
    assert ikw["scale"][0] > ikw["scale"][1], "the sample is meant to have anisotropic voxels"
    verts, faces, values = surface
    assert set(np.unique(values).astype(int)) == {1, 2, 3}
    assert skw["metadata"]["labels"].shape == (len(faces), 2)
    assert points.shape == (3, 3)
    # the mesh (um) lies inside the stack's extent (um), with the margin
    extent = (np.asarray(image.shape) - 1) * np.asarray(ikw["scale"])
    assert np.all(verts.min(axis=0) >= params["margin_um"] - 1e-6)
    assert np.all(verts.max(axis=0) <= extent)
    # Poisson counts: non-negative integers
    assert image.min() >= 0 and np.all(image == np.round(image))
    # cached: a second call loads the same stack from disk
    assert len(list(sample_cache.glob("embryo_*.npz"))) == 1
    again = _sample_data.make_sample_data()[0][0]
    np.testing.assert_array_equal(again, image)


@pytest.mark.slow
def test_sample_brightness_sits_on_the_membranes(sample_cache):
    from scipy.spatial import cKDTree

    emb = _sample_data.synthetic_embryo()
    image, spacing, mesh = emb["image"], np.asarray(emb["spacing_um"]), emb["mesh"]
    # densely sample the surface (vertices + face centres) and measure voxel-to-membrane distances
    pts = np.concatenate([mesh.verts, mesh.verts[mesh.faces].mean(axis=1)])
    tree = cKDTree(pts)
    idx = np.argwhere(np.ones(image.shape, bool))
    dist, _ = tree.query(idx * spacing)
    dist = dist.reshape(image.shape)
    sigma_z = _sample_data.EMBRYO_PARAMS["sigma_um"][0]
    bright = image >= np.percentile(image, 99)
    far = dist > 3 * sigma_z
    assert np.median(dist[bright]) < sigma_z
    # far from any membrane only the background (+ noise) remains
    bg = _sample_data.EMBRYO_PARAMS["background_photons"]
    assert abs(image[far].mean() - bg) < 0.5 * bg
    assert image[bright].mean() > 5 * bg


def test_cache_key_depends_on_every_parameter():
    base = dict(_sample_data.EMBRYO_PARAMS)
    keys = {_sample_data._cache_key(base)}
    for name in base:
        changed = dict(base)
        changed[name] = (base[name], "x")  # any change of any value
        keys.add(_sample_data._cache_key(changed))
    assert len(keys) == len(base) + 1


# File > Open Sample in a shown viewer: tests/test_napari_user_paths.py


def test_sample_truth_mesh_is_wound_by_its_labels_and_editable():
    """The sample's truth layer is a labelled mesh a user can measure and edit like a fit: every
    cell's faces wound outward (trimesh's own volume of the cell's closed surface, positive and
    equal to the labelled signed volume), and each cell can be split by a plane."""
    import trimesh

    from deltamic_core.geometry.edit import split_cell
    from deltamic_core.geometry.measure import measure

    mesh, _ = _sample_data.embryo_mesh()
    table = measure(mesh)  # orients the faces itself: the reference volumes
    volumes = dict(zip(np.asarray(table["cell"]).tolist(), np.asarray(table["volume_um3"]).tolist()))
    for cell in (1, 2, 3):
        sel = (mesh.labels == cell).any(axis=1)
        faces = mesh.faces[sel].copy()
        inward = mesh.labels[sel, 1] == cell  # normal points from l1 into l2: into this cell
        faces[inward] = faces[inward][:, [0, 2, 1]]
        tm = trimesh.Trimesh(mesh.verts, faces, process=False)
        assert tm.volume > 0
        assert volumes[cell] == pytest.approx(tm.volume, rel=1e-9)
        centre = mesh.verts[np.unique(faces)].mean(axis=0)
        parts = split_cell(mesh, cell, centre + [0, 1, 0], centre - [0, 1, 0])
        assert len(np.unique(parts.labels[parts.labels > 0])) == 4
