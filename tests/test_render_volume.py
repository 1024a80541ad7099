"""The renderer's volume term with signed per-face weights (``fit.fitter.volume_face_weights``):
interior staining of .rec-convention meshes, several regions, shared faces.

Truth: voxel fill fractions of the same ball computed by supersampling (no deltamic code), and
the renderer's own scalar volume term on an outward-oriented plain mesh.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from deltamic_core.fit.fitter import volume_face_weights
from deltamic_core.geometry import icosphere, merge_meshes, seed_spheres
from deltamic_core.mesh import Mesh
from deltamic_core.psf import GaussianPSF
from deltamic_core.render import Renderer

SHAPE, SPACING = (24, 40, 40), (0.5, 0.25, 0.25)
SIGMA = (0.8, 0.3, 0.3)


def _renderer():
    return Renderer(SHAPE, SPACING, GaussianPSF(sigma_um=SIGMA), dtype=torch.float64)


def _render(r, mesh, vw):
    v = torch.tensor(mesh.verts)
    f = torch.tensor(mesh.faces)
    return r.render(v, f, torch.zeros(len(f), dtype=torch.float64), volume_weight=vw).detach().numpy()


def _ball_image(center, radius, ss=4):
    axes = [(np.arange(n * ss) - (ss - 1) / 2) / ss * s for n, s in zip(SHAPE, SPACING)]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    inside = (zz - center[0]) ** 2 + (yy - center[1]) ** 2 + (xx - center[2]) ** 2 <= radius**2
    fill = inside.reshape(SHAPE[0], ss, SHAPE[1], ss, SHAPE[2], ss).mean(axis=(1, 3, 5))
    return ndimage.gaussian_filter(fill, [s / d for s, d in zip(SIGMA, SPACING)], mode="constant", truncate=5)


def test_rec_convention_mesh_renders_a_bright_filled_object():
    c, rad = (6.0, 5.0, 5.0), 2.5
    seed = seed_spheres([c], rad, 4)  # .rec convention: normals point INTO the cell
    r = _renderer()
    w = volume_face_weights(seed)
    assert np.all(w == -1.0)  # every face (0, 1): normal from the medium into the cell
    img = _render(r, seed, torch.tensor(w))
    truth = _ball_image(c, rad)
    assert img.min() > -1e-3 and img.max() == pytest.approx(truth.max(), rel=0.02)
    # the icosphere's volume is a bit below the ball's: compare totals with its own volume
    assert np.abs(img - truth).max() < 0.03
    # the unsigned scalar term on the same mesh is the negative (the reported failure's cause)
    assert np.allclose(_render(r, seed, 1.0), -img, atol=1e-9)
    # and on an outward plain mesh the scalar and the per-face form agree
    plain = icosphere(c, rad, 4)
    assert np.allclose(_render(r, plain, 1.0), _render(r, plain, torch.tensor(volume_face_weights(plain))), atol=1e-9)


def test_shared_faces_cancel_and_cell_weights_scale_regions():
    a = seed_spheres([(6.0, 5.0, 3.5)], 1.8, 3)
    b = seed_spheres([(6.0, 5.0, 6.5)], 1.8, 3)
    two = merge_meshes([a, b])
    r = _renderer()
    both = _render(r, two, torch.tensor(volume_face_weights(two)))
    one = _render(r, a, torch.tensor(volume_face_weights(a)))
    other = _render(r, b, torch.tensor(volume_face_weights(b)))
    assert np.allclose(both, one + other, atol=1e-9)
    half = _render(r, two, torch.tensor(volume_face_weights(two, {2: 0.5})))
    assert np.allclose(half, one + 0.5 * other, atol=1e-9)
    # a face between two cells of equal weight contributes nothing
    lab = np.array([[1, 2], [0, 1]])
    w = volume_face_weights(Mesh(np.eye(3), np.array([[0, 1, 2], [0, 2, 1]]), lab))
    assert w.tolist() == [0.0, -1.0]


def test_per_face_volume_weight_must_match_the_faces():
    seed = seed_spheres([(6.0, 5.0, 5.0)], 2.0, 2)
    with pytest.raises(ValueError, match="volume_weight per face must have"):
        _render(_renderer(), seed, torch.ones(3, dtype=torch.float64))
