"""The volume term on the real-space route (render/volume_real.py) against the Fourier route
(exact mesh transform x OTF) on a well-sampled Gaussian, against a supersampled ball blurred
by scipy, and its gradients against the Fourier route's and finite differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from deltamic_core.fit.fitter import volume_face_weights
from deltamic_core.geometry import icosphere, merge_meshes, seed_spheres
from deltamic_core.psf import GaussianPSF
from deltamic_core.render import Renderer

SHAPE, SPACING = (20, 36, 36), (0.5, 0.25, 0.25)
SIGMA = (0.7, 0.3, 0.3)  # well sampled: |OTF| < 1e-3 at Nyquist, the Fourier route folds nothing


def _pair(sigma=SIGMA, shape=SHAPE, spacing=SPACING):
    psf = GaussianPSF(sigma_um=sigma)
    real = Renderer(shape, spacing, psf, dtype=torch.float64, route="real")
    fourier = Renderer(shape, spacing, psf, dtype=torch.float64, route="fourier")
    assert real.route == "real" and fourier.route == "fourier"
    return real, fourier


def _render(r, mesh, vw, verts=None):
    """The volume image (no membrane); a graph to ``verts`` when they are given."""
    v = torch.tensor(mesh.verts) if verts is None else verts
    f = torch.tensor(mesh.faces)
    img = r.render(v, f, torch.zeros(len(f), dtype=torch.float64), volume_weight=vw)
    return img if verts is not None else img.detach()


def test_volume_image_matches_the_fourier_route():
    real, fourier = _pair()
    assert fourier.oversampling == (1, 1, 1)
    mesh = icosphere((4.6, 4.4, 4.7), 2.1, 3)
    a = _render(real, mesh, 1.0).numpy()
    b = _render(fourier, mesh, 1.0).numpy()
    assert b.max() == pytest.approx(1.0, abs=0.01)
    assert np.abs(a - b).max() < 3e-3 * b.max()
    # a total: the sum of the image times the voxel volume is the enclosed volume
    assert a.sum() * np.prod(SPACING) == pytest.approx(b.sum() * np.prod(SPACING), rel=1e-3)


def test_signed_per_face_weights_render_two_regions_like_the_fourier_route():
    real, fourier = _pair()
    two = seed_spheres([(4.5, 4.5, 3.0), (4.5, 4.5, 6.1)], 1.7, 3)  # .rec winding, touching
    w = torch.tensor(volume_face_weights(two, {1: 1.0, 2: 0.4}))
    a = _render(real, two, w).numpy()
    b = _render(fourier, two, w).numpy()
    assert np.abs(a - b).max() < 3e-3 * b.max()
    assert a.min() > -3e-3


def test_volume_image_of_an_undersampled_psf_is_the_blurred_ball():
    # sigma 0.11 um on 0.25 um voxels: the Fourier route would fold from a 3x oversampled grid
    sigma, ss = (0.26, 0.11, 0.11), 6
    psf = GaussianPSF(sigma_um=sigma)
    r = Renderer(SHAPE, SPACING, psf, dtype=torch.float64)
    assert r.route == "real"
    c, rad = (4.6, 4.4, 4.7), 2.2
    mesh = icosphere(c, rad, 5)
    img = _render(r, mesh, 1.0).numpy()
    assert r._band is None  # no Fourier plan was built for the volume term
    # truth without deltamic: a fine fill (ss^3 per voxel) blurred by scipy, sampled at the voxel centres
    fs = [s / ss for s in SPACING]
    axes = [np.arange(n * ss) * f - (ss // 2) * f for n, f in zip(SHAPE, fs)]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    fill = ((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= rad**2).astype(float)
    blur = ndimage.gaussian_filter(fill, [s / f for s, f in zip(sigma, fs)], mode="constant", truncate=5)
    truth = blur[ss // 2 :: ss, ss // 2 :: ss, ss // 2 :: ss]
    # the icosphere is inscribed in the ball (a little smaller): compare away from the edge too
    assert np.abs(img - truth).max() < 0.08
    assert np.abs(img - truth).mean() < 4e-3
    assert img.sum() == pytest.approx(truth.sum(), rel=0.01)


def test_volume_gradients_match_the_fourier_route_and_finite_differences():
    real, fourier = _pair()
    mesh = merge_meshes([icosphere((4.6, 4.4, 4.7), 2.0, 2)])
    rng = np.random.default_rng(0)
    probe = torch.tensor(rng.normal(size=SHAPE))
    grads = []
    for r in (real, fourier):
        v = torch.tensor(mesh.verts, requires_grad=True)
        (_render(r, mesh, 1.0, verts=v) * probe).sum().backward()
        grads.append(v.grad.numpy())
    g_real, g_fourier = grads
    assert np.abs(g_real - g_fourier).max() < 0.02 * np.abs(g_fourier).max()
    # central differences of the real route itself at a few vertices and axes
    for i, a in ((0, 0), (5, 1), (17, 2), (33, 0)):
        vals = []
        for h in (1e-5, -1e-5):
            v = torch.tensor(mesh.verts)
            v[i, a] += h
            vals.append(float((_render(real, mesh, 1.0, verts=v).detach() * probe).sum()))
        assert (vals[0] - vals[1]) / 2e-5 == pytest.approx(g_real[i, a], rel=1e-4, abs=1e-6)


def test_learnt_sigma_gets_the_gradient_of_the_volume_image():
    # d/d(log sigma) of the real route's volume image against central differences in log sigma
    mesh = icosphere((4.6, 4.4, 4.7), 2.0, 3)
    probe = torch.tensor(np.random.default_rng(1).normal(size=SHAPE))

    def loss(log_diag):
        psf = GaussianPSF(sigma_um=(0.5, 0.12, 0.12))
        with torch.no_grad():
            psf.log_diag.copy_(log_diag)
        r = Renderer(SHAPE, SPACING, psf, dtype=torch.float64, route="real")
        return (_render(r, mesh, 1.0, verts=torch.tensor(mesh.verts)) * probe).sum(), psf.log_diag

    base = torch.log(torch.tensor([0.5, 0.12, 0.12], dtype=torch.float64))
    value, param = loss(base)
    (g,) = torch.autograd.grad(value, param)
    for a in range(3):
        h = torch.zeros(3, dtype=torch.float64)
        h[a] = 1e-5
        fd = (float(loss(base + h)[0].detach()) - float(loss(base - h)[0].detach())) / 2e-5
        assert float(g[a]) == pytest.approx(fd, rel=1e-3, abs=1e-5)


@pytest.mark.parametrize("F,blur", [(2, 0.0), (3, 0.3)])
def test_coarse_level_volume_term_is_the_block_average_of_the_fine_one(F, blur):
    """A coarse level's volume image on the real route (the block-averaged Gaussian: a mean of
    shifted steps along z, of shifted Gaussians across) equals its definition, the mean of F^3
    fine voxels of the fine real-route volume image of the blur-widened Gaussian; and its
    vertex gradient matches the fine image's block average's."""
    from deltamic_core.fit import block_average
    from deltamic_core.psf import BlockAveragedPSF

    fine, shape = (0.5, 0.25, 0.25), (8, 12, 12)
    sp = tuple(F * s for s in fine)
    origin = tuple(-0.5 * (n - 1) * s + 0.013 for n, s in zip(shape, sp))
    fine_origin = tuple(o - 0.5 * (F - 1) * s for o, s in zip(origin, fine))
    sigma = (0.3, 0.1, 0.1)
    level_psf = BlockAveragedPSF(GaussianPSF(sigma).requires_grad_(False), F, fine, blur_um=blur)
    coarse = Renderer(shape, sp, level_psf, origin_um=origin, route="real", dtype=torch.float64)
    wide = GaussianPSF(tuple(float(np.hypot(s, blur)) for s in sigma)).requires_grad_(False)
    ref = Renderer(tuple(n * F for n in shape), fine, wide, origin_um=fine_origin, route="real", dtype=torch.float64)
    mesh = icosphere((0.3, -0.2, 0.15), 2.1, subdivisions=2)
    probe = torch.rand(shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    grads, imgs = [], []
    for r, post in ((coarse, lambda im: im), (ref, lambda im: block_average(im, F))):
        v = torch.tensor(mesh.verts, dtype=torch.float64).requires_grad_(True)
        img = post(_render(r, mesh, 1.0, verts=v))
        (img * probe).sum().backward()
        imgs.append(img.detach())
        grads.append(v.grad)
    # the fine image is the region's blurred indicator: interior voxels near 1
    assert float(imgs[1].max()) > 0.9
    assert float((imgs[0] - imgs[1]).abs().max()) < 1e-12
    assert float((grads[0] - grads[1]).abs().max()) < 1e-10 * float(grads[1].abs().max())
