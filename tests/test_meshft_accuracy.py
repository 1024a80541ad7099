"""Accuracy of mesh_ft against independent truth (mpmath closed form, quadrature, the sphere).

Every test runs on every available backend; approximate backends (e.g. "nufft") are skipped
where exactness is asserted.
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import pytest
import torch
import trimesh

from deltamic_core.grid import FFTGrid, GridBand
from deltamic_core.meshft import available_backends, get_backend, mesh_ft
from reference_meshft import mesh_ft_mp, sphere_ft, triangle_ft_mp, triangle_ft_quad

warnings.filterwarnings("ignore", message="mesh_ft: using the pure-torch backend")

EXACT = [b for b in available_backends() if getattr(get_backend(b), "exact", True) and b != "nufft"]


def device_of(backend: str) -> str:
    return "cuda" if backend == "cuda" else "cpu"


def run(backend, verts, faces, freqs, weights=None, dtype=torch.float64):
    dev = device_of(backend)
    v = torch.as_tensor(np.asarray(verts), dtype=dtype, device=dev)
    f = torch.as_tensor(np.asarray(faces), dtype=torch.int64, device=dev)
    k = torch.as_tensor(np.asarray(freqs), dtype=dtype, device=dev)
    w = None if weights is None else torch.as_tensor(np.asarray(weights), dtype=dtype, device=dev)
    return mesh_ft(v, f, k, w, backend=backend).cpu().to(torch.complex128).numpy()


# ------------------------------------------------------------------------------------------------
# test geometry: triangles within 10 um of the origin, edges 0.03..5 um, |k| <= 4 cycles/um
# ------------------------------------------------------------------------------------------------
def random_triangle(rng, edge_lo=0.03, edge_hi=5.0, min_angle=0.02):
    centre = rng.normal(size=3)
    centre *= rng.uniform(0, 7.5) / np.linalg.norm(centre)
    length = math.exp(rng.uniform(math.log(edge_lo), math.log(edge_hi)))
    u = rng.normal(size=3)
    u /= np.linalg.norm(u)
    w = rng.normal(size=3)
    w -= w.dot(u) * u
    w /= np.linalg.norm(w)
    ang = rng.uniform(min_angle, math.pi - min_angle)
    e2 = length * rng.uniform(0.3, 1.0) * (math.cos(ang) * u + math.sin(ang) * w)
    a = centre - length * u / 3
    return np.stack([a, a + length * u, a + e2])


def special_freqs(tri, rng, n_random=24, kmax=4.0):
    """k = 0, k normal to the plane (all phases equal), k in-plane normal to an edge (two equal),
    slightly off those (nearly equal), along an edge, and random directions."""
    n = np.cross(tri[1] - tri[0], tri[2] - tri[0])
    n /= np.linalg.norm(n)
    e = tri[1] - tri[0]
    e /= np.linalg.norm(e)
    perp = np.cross(n, e)
    ks = [np.zeros(3)]
    for s in (1e-3, 0.3, 1.7, kmax):
        ks += [s * n, s * perp, s * (perp + 1e-7 * e), s * (n + 1e-4 * e), s * e]
    d = rng.normal(size=(n_random, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    ks += list(d * rng.uniform(0, kmax, size=(n_random, 1)))
    return np.array(ks)


@functools.cache
def triangle_cases(dtype_name: str):
    """(triangle, freqs, reference) with inputs rounded to ``dtype`` and taken as exact."""
    rng = np.random.default_rng(20261125)
    np_dtype = np.float32 if dtype_name == "float32" else np.float64
    cases = []
    for _ in range(30):
        tri = random_triangle(rng).astype(np_dtype).astype(np.float64)
        ks = special_freqs(tri, rng).astype(np_dtype).astype(np.float64)
        cases.append((tri, ks, mesh_ft_mp(tri, [[0, 1, 2]], ks)))
    return cases


@functools.cache
def mesh_case(dtype_name: str):
    """A jittered 80-face icosphere (edges ~0.3..1 um) away from the origin, random weights."""
    rng = np.random.default_rng(7)
    np_dtype = np.float32 if dtype_name == "float32" else np.float64
    ico = trimesh.creation.icosphere(subdivisions=1, radius=2.5)
    verts = ico.vertices + rng.normal(scale=0.15, size=ico.vertices.shape) + np.array([4.0, -3.0, 5.0])
    verts = verts.astype(np_dtype).astype(np.float64)
    faces = np.asarray(ico.faces, dtype=np.int64)
    weights = rng.uniform(0.5, 2.0, size=len(faces)).astype(np_dtype).astype(np.float64)
    d = rng.normal(size=(40, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    ks = np.concatenate([np.zeros((1, 3)), d * rng.uniform(0, 4, size=(40, 1)), [[1e-4, 0, 0]]])
    ks = ks.astype(np_dtype).astype(np.float64)
    return verts, faces, weights, ks, mesh_ft_mp(verts, faces, ks, weights)


# ------------------------------------------------------------------------------------------------
def test_reference_closed_form_matches_quadrature():
    rng = np.random.default_rng(3)
    for _ in range(3):
        tri = random_triangle(rng, 0.2, 2.0, 0.3)
        for k in ([0.0, 0.0, 0.0], rng.normal(size=3), 2.5 * rng.normal(size=3)):
            ref = triangle_ft_mp(tri[0], tri[1], tri[2], k)
            quad = triangle_ft_quad(tri[0], tri[1], tri[2], k)
            assert abs(ref - quad) <= 1e-20 * max(1.0, abs(ref))


@pytest.mark.parametrize("backend", EXACT)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 3e-7)])
def test_single_triangles_match_mpmath(backend, dtype, tol):
    worst = 0.0
    for tri, ks, ref in triangle_cases(str(dtype).split(".")[-1]):
        out = run(backend, tri, [[0, 1, 2]], ks, dtype=dtype)
        err = np.max(np.abs(out - ref)) / abs(ref[0])
        worst = max(worst, err)
    assert worst <= tol, f"max error {worst:.3g} |U(0)|"


@pytest.mark.parametrize("backend", EXACT)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 3e-7)])
def test_weighted_mesh_matches_mpmath(backend, dtype, tol):
    verts, faces, weights, ks, ref = mesh_case(str(dtype).split(".")[-1])
    out = run(backend, verts, faces, ks, weights, dtype=dtype)
    assert abs(ref[0].imag) < 1e-30 and ref[0].real > 0
    err = np.abs(out - ref) / abs(ref[0])
    assert err.max() <= tol, f"max error {err.max():.3g} |U(0)|"


@pytest.mark.parametrize("backend", EXACT)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 3e-7)])
def test_tiny_and_sliver_triangles_match_mpmath(backend, dtype, tol):
    """Edges of 1 nm .. 30 nm, and slivers (angles 1e-3 .. 1e-6 rad), far from the origin."""
    rng = np.random.default_rng(11)
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    tris = [random_triangle(rng, 1e-3, 0.03) for _ in range(4)]
    tris += [random_triangle(rng, 0.1, 5.0, 1e-6)[[0, 1, 2]] for _ in range(2)]
    tris += [random_triangle(rng, 0.1, 5.0, 1e-3) for _ in range(2)]
    for tri in tris:
        tri = tri.astype(np_dtype).astype(np.float64)
        ks = special_freqs(tri, rng, n_random=8).astype(np_dtype).astype(np.float64)
        ref = mesh_ft_mp(tri, [[0, 1, 2]], ks)
        out = run(backend, tri, [[0, 1, 2]], ks, dtype=dtype)
        assert np.all(np.abs(out - ref) <= tol * abs(ref[0]) + 1e-300)


@pytest.mark.parametrize("backend", EXACT)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_degenerate_triangles_contribute_nothing(backend, dtype):
    verts = np.array(
        [
            [1.0, 2.0, 3.0],
            [2.0, 3.0, 4.0],
            [3.0, 4.0, 5.0],  # collinear
            [0.5, -1.0, 2.0],
            [1.5, -1.0, 2.5],
            [0.7, 0.1, 1.9],
        ]  # a proper triangle
    )
    faces = np.array([[0, 1, 2], [3, 3, 4], [3, 4, 5], [5, 5, 5], [0, 2, 1]])
    ks = np.array([[0.0, 0.0, 0.0], [0.3, -0.2, 1.0], [2.0, 1.0, -3.0], [1.0, -1.0, 0.0]])
    out = run(backend, verts, faces, ks, dtype=dtype)
    ref = run(backend, verts, faces[2:3], ks, dtype=dtype)
    degenerate = run(backend, verts, faces[[0, 1, 3, 4]], ks, dtype=dtype)
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(degenerate, 0)  # exactly nothing, not a rounding residue
    # with the proper triangle among them: the same transform up to the summation order (a
    # batched reduction over 5 faces rounds differently from one over 1: 1.4e-16 seen in float64)
    np.testing.assert_allclose(out, ref, rtol=0, atol=4 * torch.finfo(dtype).eps * np.abs(ref).max())


@pytest.mark.parametrize("backend", EXACT)
def test_icosphere_approaches_sphere_transform(backend):
    """4 pi R^2 sin(x)/x up to the polyhedral error, bounded rigorously by the mesh: projecting
    the polyhedron radially onto the sphere moves each point by at most delta = R - (smallest
    face-plane distance to the centre) and enlarges the area measure by A_sphere - A_poly in
    total, so |U_poly(k) - U_sphere(k)| <= A_poly 2 pi |k| delta + (A_sphere - A_poly)."""
    R = 5.0
    ico = trimesh.creation.icosphere(subdivisions=5, radius=R)
    verts, faces = np.asarray(ico.vertices), np.asarray(ico.faces)
    tri = verts[faces]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    a_poly = 0.5 * np.linalg.norm(n, axis=1).sum()
    plane_dist = np.abs(np.einsum("ij,ij->i", n / np.linalg.norm(n, axis=1, keepdims=True), tri[:, 0]))
    delta = R - plane_dist.min()
    rng = np.random.default_rng(5)
    d = rng.normal(size=(24, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    knorm = np.linspace(0.0, 1.5, 24)
    out = run(backend, verts, faces, d * knorm[:, None])
    assert abs(out[0] - a_poly) <= 1e-12 * a_poly
    # (+ the rounding allowed at k = 0 above: at k = 0 the bound is attained exactly)
    bound = a_poly * 2 * math.pi * knorm * delta + (4 * math.pi * R**2 - a_poly) + 1e-12 * a_poly
    err = np.abs(out - sphere_ft(knorm, R))
    assert np.all(err <= bound), (err / bound).max()
    assert np.all(np.abs(out.imag) <= 1e-9 * a_poly)  # centred, symmetric: real transform


@pytest.mark.parametrize("backend", EXACT)
def test_shift_theorem(backend):
    verts, faces, weights, ks, _ = mesh_case("float64")
    t = np.array([3.25, -4.5, 2.125])
    base = run(backend, verts, faces, ks, weights)
    moved = run(backend, verts + t, faces, ks, weights)
    expect = np.exp(-2j * math.pi * ks @ t) * base
    assert np.max(np.abs(moved - expect)) <= 1e-12 * abs(base[0])


def small_band():
    grid = FFTGrid((16, 20, 18), (0.5, 0.3, 0.3), (1.0, -2.0, 0.5))
    mask = torch.zeros(grid.rfft_shape, dtype=torch.bool)
    mask[:3, :4, :3] = True
    mask[-2:, -3:, :2] = True
    return GridBand.from_mask(grid, mask)


def backend_tol(backend: str) -> float:
    """Error bound relative to |U(0)|: rounding for exact backends, the set tolerance otherwise."""
    b = get_backend(backend)
    return 1e-12 if getattr(b, "exact", True) else 10 * float(getattr(b, "tol", 1e-6))


@pytest.mark.parametrize("backend", available_backends())
def test_linear_in_weights_and_independent_of_orientation(backend):
    verts, faces, weights, _, _ = mesh_case("float64")
    band = small_band()
    rng = np.random.default_rng(2)
    w2 = rng.normal(size=len(faces))
    v, f = torch.as_tensor(verts, device=device_of(backend)), torch.as_tensor(faces, device=device_of(backend))

    def U(w, faces=f):
        return mesh_ft(v, faces, band, torch.as_tensor(w, device=v.device), backend=backend).cpu().numpy()

    u1, u2, u12 = U(weights), U(w2), U(2.0 * weights - 3.0 * w2)
    scale = np.abs(u1[0]) + 3 * np.abs(w2).sum()
    assert np.max(np.abs(u12 - (2.0 * u1 - 3.0 * u2))) <= 1e-12 * scale
    flipped = U(weights, f.flip(1).contiguous())
    assert np.max(np.abs(flipped - u1)) <= backend_tol(backend) * abs(u1[0])


@pytest.mark.parametrize("backend", available_backends())
def test_grid_band_input_equals_its_frequencies(backend):
    """A GridBand gives the transform at band.freqs() (reference: the exact torch backend)."""
    band = small_band()
    verts, faces, weights, _, _ = mesh_case("float64")
    dev = device_of(backend)
    v = torch.as_tensor(verts, device=dev)
    f = torch.as_tensor(faces, device=dev)
    from_band = mesh_ft(v, f, band, backend=backend).cpu()
    from_freqs = mesh_ft(v.cpu(), f.cpu(), band.freqs(torch.float64), backend="torch")
    atol = backend_tol(backend) * float(from_freqs[0].abs())
    torch.testing.assert_close(from_band, from_freqs, rtol=0, atol=atol)


def test_torch_backend_tiling_does_not_change_results():
    from deltamic_core.meshft._torch_backend import TorchBackend

    verts, faces, weights, ks, _ = mesh_case("float64")
    v, f, w, k = (torch.as_tensor(a) for a in (verts, faces, weights, ks))
    big = TorchBackend().forward(v, f, w, k)
    small = TorchBackend(max_bytes=8 * 600).forward(v, f, w, k)  # ~2 pairs per tile
    torch.testing.assert_close(small, big, rtol=0, atol=1e-13 * float(big.abs().max()))


@pytest.mark.parametrize("backend", available_backends())
def test_empty_frequency_list_gives_empty_result(backend):
    dev = device_of(backend)
    v = torch.rand(4, 3, dtype=torch.float32, device=dev, requires_grad=True)
    f = torch.tensor([[0, 1, 2], [1, 2, 3]], device=dev)
    out = mesh_ft(
        v, f, torch.zeros(0, 3, device=dev), backend=backend if not get_backend(backend).needs_band else "auto"
    )
    assert out.shape == (0,) and out.dtype == torch.complex64
    out.abs().sum().backward()
    assert torch.equal(v.grad, torch.zeros_like(v))
