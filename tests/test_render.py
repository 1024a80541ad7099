"""Renderer against independent truth: a real-space blur of densely sampled triangles, analytic
transforms (cube, ball), exact normalisation identities, a much larger box (no wrap-around),
and finite differences."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from deltamic_core.psf import GaussianPSF
from deltamic_core.render import Renderer, fast_length, padded_box

# ---------------------------------------------------------------------------------------
# helpers (test-only, independent of the code under test)
# ---------------------------------------------------------------------------------------
# Dunavant's 6-point rule, exact for polynomials of degree 4 on a triangle: barycentric
# orbits (a, a, 1 - 2a) with weights summing to 1.
_DUN_A, _DUN_WA = 0.445948490915965, 0.223381589678011
_DUN_B, _DUN_WB = 0.091576213509771, 0.109951743655322


def _dunavant6():
    pts, w = [], []
    for a, wa in ((_DUN_A, _DUN_WA), (_DUN_B, _DUN_WB)):
        for perm in ((a, a, 1 - 2 * a), (a, 1 - 2 * a, a), (1 - 2 * a, a, a)):
            pts.append(perm)
            w.append(wa)
    return np.array(pts), np.array(w)


def _triangle_quadrature(n_sub):
    """Barycentric points (Q, 3) and weights (Q,) summing to 1: each triangle split into
    n_sub^2 similar sub-triangles, each integrated with the degree-4 rule."""
    base_p, base_w = _dunavant6()
    pts, wts = [], []
    h = 1.0 / n_sub
    for i in range(n_sub):
        for j in range(n_sub - i):
            # upward sub-triangle with corners (i, j), (i+1, j), (i, j+1) in (b1, b2) units
            corners = [np.array([i, j]), np.array([i + 1, j]), np.array([i, j + 1])]
            subs = [corners]
            if i + j < n_sub - 1:
                subs.append([np.array([i + 1, j]), np.array([i + 1, j + 1]), np.array([i, j + 1])])
            for c in subs:
                c = np.array(c, dtype=float) * h  # (3, 2) in (b1, b2)
                b12 = base_p @ c
                pts.append(np.column_stack([1 - b12.sum(1), b12]))
                wts.append(base_w * h * h)
    return np.concatenate(pts), np.concatenate(wts)


def _real_space_blur(verts, faces, weights, sigma, axes, n_sub=4, chunk=8000):
    """sum over quadrature points of area * density * Gaussian(x_voxel - point): the image of
    the flat-triangle mesh under an axis-aligned Gaussian PSF, computed in real space."""
    bary, qw = _triangle_quadrature(n_sub)
    tri = verts[faces]  # (F, 3, 3)
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    points = np.einsum("qc,fcd->fqd", bary, tri).reshape(-1, 3)
    mass = (area * weights)[:, None] * qw[None, :]
    mass = mass.reshape(-1)
    z, y, x = axes

    def g(c, p, s):
        return np.exp(-0.5 * ((c[:, None] - p[None, :]) / s) ** 2) / (math.sqrt(2 * math.pi) * s)

    out = np.zeros((len(z), len(y), len(x)))
    for s0 in range(0, len(mass), chunk):
        p, m = points[s0:s0 + chunk], mass[s0:s0 + chunk]
        gz, gy, gx = g(z, p[:, 0], sigma[0]) * m, g(y, p[:, 1], sigma[1]), g(x, p[:, 2], sigma[2])
        zy = (gz[:, None, :] * gy[None, :, :]).reshape(-1, len(p))
        out += (zy @ gx.T).reshape(out.shape)
    return out


def _sphere(radius, subdivisions, center=(0.0, 0.0, 0.0), dtype=torch.float64):
    m = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    v = torch.tensor(np.asarray(m.vertices) + np.asarray(center), dtype=dtype)
    f = torch.tensor(np.asarray(m.faces), dtype=torch.int64)
    return v, f


def _cube(lo, hi, dtype=torch.float64):
    m = trimesh.creation.box(bounds=np.array([lo, hi], dtype=float))
    return torch.tensor(np.asarray(m.vertices), dtype=dtype), torch.tensor(np.asarray(m.faces), dtype=torch.int64)


def _area(v, f):
    v = v.detach().to(torch.float64)
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    return float(0.5 * torch.linalg.vector_norm(torch.linalg.cross(b - a, c - a, dim=1), dim=1).sum())


def _axes(r):
    return [np.asarray(o + s * np.arange(n)) for o, s, n in zip(r.origin_um, r.spacing_um, r.shape)]


def _meshft_available():
    try:
        from deltamic_core.meshft import mesh_ft  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


needs_meshft = pytest.mark.skipif(not _meshft_available(), reason="deltamic_core.meshft not available yet")


# ---------------------------------------------------------------------------------------
# plan: padding, crop, band
# ---------------------------------------------------------------------------------------
def _is_5_smooth(n):
    for p in (2, 3, 5):
        while n % p == 0:
            n //= p
    return n == 1


def test_padded_box_keeps_the_image_lattice_and_fft_friendly_sizes():
    shape, spacing, origin = (13, 37, 41), (0.5, 0.25, 0.2), (1.3, -2.0, 7.1)
    blur = (2.4, 0.8, 0.8)
    box = padded_box(shape, spacing, origin, blur, margin_um=(0.0, 0.5, 0.0))
    for ax in range(3):
        n_pad = box.grid.shape[ax]
        assert _is_5_smooth(n_pad)
        need = math.ceil((blur[ax] + (0.5 if ax == 1 else 0.0)) / spacing[ax] - 1e-9)
        assert box.lo[ax] == need
        assert n_pad - shape[ax] - box.lo[ax] >= need  # padding after the image too
        assert box.grid.origin_um[ax] + box.lo[ax] * spacing[ax] == pytest.approx(origin[ax], abs=1e-12)
    assert box.grid.shape[2] % 2 == 0
    assert [s.stop - s.start for s in box.crop] == list(shape)


def test_fast_length_is_smallest_smooth_length():
    for n in (1, 7, 97, 121, 1001):
        m = fast_length(n)
        assert m >= n and _is_5_smooth(m)
        assert all(not _is_5_smooth(k) for k in range(n, m))
        e = fast_length(n, even=True)
        assert e % 2 == 0 and _is_5_smooth(e) and all(not (k % 2 == 0 and _is_5_smooth(k)) for k in range(n, e))


def test_band_is_the_relative_otf_threshold_and_relax_widens_it():
    psf = GaussianPSF((0.7, 0.3, 0.3))
    r = Renderer((16, 24, 20), (0.5, 0.25, 0.25), psf, band_threshold=1e-2, dtype=torch.float64)
    otf = psf.otf(r.grid, dtype=torch.float64).detach()
    mask = torch.zeros(r.grid.rfft_shape, dtype=torch.bool)
    mask.view(-1)[r.band.flat_index()] = True
    assert torch.equal(mask, otf > 1e-2 * otf.max())
    n_tight = len(r.band)
    wider = r.update_band(relax=100.0)
    assert len(wider) > n_tight
    assert torch.equal(mask.view(-1)[wider.flat_index()].sum(), torch.tensor(n_tight))
    assert r.otf_band().shape == (len(wider),)


@pytest.mark.parametrize("bad", [1.0, 2.0, -1e-3, float("nan")])
def test_band_threshold_out_of_range_is_refused(bad):
    with pytest.raises(ValueError, match="band_threshold"):
        Renderer((8, 8, 8), 0.25, GaussianPSF(0.3), band_threshold=bad)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(shape=(8, 8), spacing_um=0.2), "shape"),
        (dict(shape=(8, 0, 8), spacing_um=0.2), "shape"),
        (dict(shape=(8, 8, 8), spacing_um=(0.2, -0.1, 0.2)), "spacing_um"),
        (dict(shape=(8, 8, 8), spacing_um=0.0), "spacing_um"),
        (dict(shape=(8, 8, 8), spacing_um=0.2, margin_um=-1.0), "margin_um"),
    ],
)
def test_bad_geometry_is_refused_with_a_named_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Renderer(psf=GaussianPSF(0.3), **kwargs)


def test_bad_psf_and_dtype_are_refused():
    with pytest.raises(TypeError, match="psf"):
        Renderer((8, 8, 8), 0.2, psf=object())
    with pytest.raises(TypeError, match="dtype"):
        Renderer((8, 8, 8), 0.2, GaussianPSF(0.3), dtype=torch.float16)


def test_absurd_grid_is_refused_before_allocating():
    # 4000^3 voxels: the OTF alone would need ~1 TB; the refusal must come from the estimate
    with pytest.raises(ValueError, match="GiB"):
        Renderer((4000, 4000, 4000), 0.1, GaussianPSF(0.3))
    r = Renderer((32, 32, 32), 0.2, GaussianPSF(0.3))
    small = r.memory_estimate_bytes()
    assert small > 0
    assert r.memory_estimate_bytes(n_faces=20000, n_verts=10000) > small
    assert r.memory_estimate_bytes(n_faces=20000, volume=True) > r.memory_estimate_bytes(n_faces=20000)


def test_undersampled_psf_warns():
    with pytest.warns(RuntimeWarning, match="undersampled"):
        Renderer((16, 16, 16), (0.5, 0.4, 0.4), GaussianPSF((0.6, 0.1, 0.1)))
