"""Analytic gradients of mesh_ft: finite differences, float32 vs float64, degenerate faces."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import trimesh

from deltamic_core.meshft import available_backends, get_backend, mesh_ft
from reference_meshft import fd_grad

warnings.filterwarnings("ignore", message="mesh_ft: using the pure-torch backend")

EXACT = [b for b in available_backends() if getattr(get_backend(b), "exact", True) and b != "nufft"]


def device_of(backend: str) -> str:
    return "cuda" if backend == "cuda" else "cpu"


def small_mesh(seed=0, dtype=torch.float64):
    """A jittered 20-face icosahedron (edges ~1 um) off the origin, random positive weights."""
    rng = np.random.default_rng(seed)
    ico = trimesh.creation.icosahedron()
    verts = ico.vertices * 1.2 + rng.normal(scale=0.1, size=ico.vertices.shape) + np.array([2.0, -1.0, 3.0])
    faces = np.asarray(ico.faces, dtype=np.int64)
    weights = rng.uniform(0.5, 2.0, size=len(faces))
    return (torch.tensor(verts, dtype=dtype), torch.tensor(faces), torch.tensor(weights, dtype=dtype))


def mixed_freqs(n=24, seed=1, dtype=torch.float64):
    """k = 0, tiny |k| (series branch), and |k| up to 3 cycles/um (recursion branch)."""
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(n, 3, generator=g, dtype=torch.float64)
    d = d / d.norm(dim=1, keepdim=True)
    mags = torch.cat([torch.zeros(1), torch.full((3,), 0.02), torch.linspace(0.05, 3.0, n - 4)]).to(torch.float64)
    return (d * mags[:, None]).to(dtype)


def band_freqs(n, kmax=3.0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(n, 3, generator=g, dtype=torch.float64)
    d = d / d.norm(dim=1, keepdim=True)
    r = kmax * torch.rand(n, 1, generator=g, dtype=torch.float64) ** (1 / 3)
    return (d * r).to(dtype)


@pytest.mark.parametrize("backend", EXACT)
def test_gradcheck_float64(backend):
    dev = device_of(backend)
    v, f, w = (t.to(dev) for t in small_mesh())
    k = mixed_freqs().to(dev)
    v.requires_grad_(True)
    w.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda v, w: mesh_ft(v, f, k, w, backend=backend), (v, w), eps=1e-6, atol=1e-7, rtol=1e-5
    )


@pytest.mark.parametrize("backend", EXACT)
def test_gradient_convention_against_finite_differences(backend):
    """grad = Re(sum_k conj(G_k) dU_k/dtheta) for a random complex G (PyTorch's convention)."""
    dev = device_of(backend)
    v, f, w = (t.to(dev) for t in small_mesh(3))
    k = mixed_freqs(16, 4).to(dev)
    g = torch.Generator().manual_seed(9)
    G = torch.complex(
        torch.randn(len(k), generator=g, dtype=torch.float64), torch.randn(len(k), generator=g, dtype=torch.float64)
    ).to(dev)
    vr = v.clone().requires_grad_(True)
    wr = w.clone().requires_grad_(True)
    mesh_ft(vr, f, k, wr, backend=backend).backward(G)
    gv = fd_grad(lambda x: mesh_ft(x, f, k, w, backend=backend), v, G)
    gw = fd_grad(lambda x: mesh_ft(v, f, k, x, backend=backend), w, G)
    torch.testing.assert_close(vr.grad, gv, rtol=1e-6, atol=1e-7 * float(gv.abs().max()))
    torch.testing.assert_close(wr.grad, gw, rtol=1e-6, atol=1e-7 * float(gw.abs().max()))


def _rel_l2(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def _grads(backend, verts, faces, freqs, dtype, G):
    dev = device_of(backend)
    v = verts.detach().to(dtype=dtype, device=dev).clone().requires_grad_(True)
    w = torch.ones(len(faces), dtype=dtype, device=dev, requires_grad=True)
    U = mesh_ft(v, faces.to(dev), freqs.to(dtype=dtype, device=dev), w, backend=backend)
    U.backward(G.to(dtype=U.dtype, device=dev))
    return v.grad.cpu(), w.grad.cpu()


@pytest.mark.slow
@pytest.mark.parametrize("backend", EXACT)
@pytest.mark.parametrize("scale,n_freqs", [(1.0, 2000), (0.1, 400), (0.02, 400)])
def test_float32_gradients_match_float64_on_icosphere(backend, scale, n_freqs):
    """2,562-vertex icosphere, radius 5 um (edges ~0.2..0.3 um) and the same with triangles
    10x and 50x smaller (all-series regime, fewer frequencies to keep it quick), band-like
    frequencies |k| <= 3: relative L2 <= 1e-4.
    (Torch backend: ~1e-7, i.e. float32 input rounding; see the report for native numbers.)"""
    ico = trimesh.creation.icosphere(subdivisions=4, radius=5.0 * scale)
    verts = torch.tensor(ico.vertices) + torch.tensor([1.0, -2.0, 0.5])
    verts = verts.to(torch.float32).to(torch.float64)  # float32 inputs taken as exact
    faces = torch.tensor(ico.faces)
    freqs = band_freqs(n_freqs).to(torch.float32).to(torch.float64)
    g = torch.Generator().manual_seed(1)
    G = torch.complex(
        torch.randn(len(freqs), generator=g, dtype=torch.float64),
        torch.randn(len(freqs), generator=g, dtype=torch.float64),
    )
    gv64, gw64 = _grads(backend, verts, faces, freqs, torch.float64, G)
    gv32, gw32 = _grads(backend, verts, faces, freqs, torch.float32, G.to(torch.complex64).to(torch.complex128))
    ev, ew = _rel_l2(gv32, gv64), _rel_l2(gw32, gw64)
    print(f"\n[{backend}] scale {scale}: vertex-gradient rel L2 {ev:.2e}, weight-gradient rel L2 {ew:.2e}")
    assert ev <= 1e-4
    assert ew <= 1e-4


@pytest.mark.parametrize("backend", EXACT)
def test_corner_derivatives_sum_to_shift_derivative(backend):
    """Moving all vertices by t multiplies U by exp(-2 pi i k.t): the vertex gradients summed over
    the mesh equal Re(sum_k conj(G_k) (-2 pi i k) U_k) (translation invariance of the area)."""
    dev = device_of(backend)
    v, f, w = (t.to(dev) for t in small_mesh(5))
    k = mixed_freqs(20, 6).to(dev)
    g = torch.Generator().manual_seed(2)
    G = torch.complex(
        torch.randn(len(k), generator=g, dtype=torch.float64), torch.randn(len(k), generator=g, dtype=torch.float64)
    ).to(dev)
    vr = v.clone().requires_grad_(True)
    U = mesh_ft(vr, f, k, w, backend=backend)
    U.backward(G)
    expect = torch.real(torch.conj(G)[:, None] * (-2j * math.pi) * k.to(U.dtype) * U.detach()[:, None]).sum(0)
    torch.testing.assert_close(vr.grad.sum(0), expect, rtol=1e-10, atol=1e-10 * float(expect.abs().max()))


@pytest.mark.parametrize("backend", EXACT)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_degenerate_triangles_have_zero_gradient(backend, dtype):
    dev = device_of(backend)
    v, f, w = small_mesh(7, dtype)
    extra = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [2.0, 2.0, 2.0]], dtype=dtype)
    verts = torch.cat([v, extra]).to(dev)
    n = v.shape[0]
    bad = torch.tensor([[n, n + 1, n + 2], [0, 0, 1], [n + 1, n + 1, n + 1], [2, n, 2]])
    faces = torch.cat([f, bad]).to(dev)
    weights = torch.cat([w, torch.ones(4, dtype=dtype)]).to(dev)
    k = mixed_freqs(16, 8, dtype).to(dev)
    G = torch.ones(len(k), dtype=torch.complex64 if dtype == torch.float32 else torch.complex128, device=dev)

    def grads(faces, weights):
        vr = verts.clone().requires_grad_(True)
        wr = weights.clone().requires_grad_(True)
        U = mesh_ft(vr, faces, k, wr, backend=backend)
        U.backward(G)
        return U.detach(), vr.grad, wr.grad

    U_all, gv_all, gw_all = grads(faces, weights)
    U_ok, gv_ok, _ = grads(f.to(dev), w.to(dev))
    assert torch.isfinite(torch.view_as_real(U_all)).all() and torch.isfinite(gv_all).all()
    # the extra vertices belong to degenerate faces only: exactly zero gradient
    assert torch.equal(gv_all[n:], torch.zeros_like(gv_all[n:]))
    assert torch.equal(gw_all[-4:], torch.zeros(4, dtype=dtype, device=dev))
    # and nothing else changes (up to the summation order of the reductions)
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(U_all, U_ok, rtol=0, atol=8 * eps * float(U_ok.abs().max()))
    torch.testing.assert_close(gv_all, gv_ok, rtol=0, atol=8 * eps * float(gv_ok.abs().max()))


@pytest.mark.parametrize("backend", EXACT)
def test_weight_gradient_is_the_face_transform(backend):
    """dU/dw_t is the transform of face t alone: with G = e_j the weight gradient is Re U_t(k_j)."""
    dev = device_of(backend)
    v, f, w = (t.to(dev) for t in small_mesh(2))
    k = mixed_freqs(6, 3).to(dev)
    wr = w.clone().requires_grad_(True)
    U = mesh_ft(v, f, k, wr, backend=backend)
    G = torch.zeros(len(k), dtype=U.dtype, device=dev)
    G[4] = 1j
    U.backward(G)
    per_face = torch.stack([mesh_ft(v, f[t : t + 1], k[4:5], backend=backend)[0] for t in range(len(f))])
    torch.testing.assert_close(wr.grad, per_face.imag, rtol=1e-12, atol=1e-14)


def _random_tile(g, spread, n=64):
    rel = [torch.randn(n, 3, generator=g, dtype=torch.float64) for _ in range(3)]
    mean = (rel[0] + rel[1] + rel[2]) / 3
    rel = tuple(r - mean for r in rel)
    k2 = torch.randn(1, 3, generator=g, dtype=torch.float64)
    x = torch.stack([k2 @ r.T for r in rel])
    per_face = (x.amax(0) - x.amin(0))[0]  # every face gets exactly this phase spread
    rel = tuple(r * (spread / per_face)[:, None] for r in rel)
    cen = torch.randn(3, n, generator=g, dtype=torch.float64)
    return k2, cen, tuple(r.T.contiguous() for r in rel)


@pytest.mark.parametrize("spread", [0.05, 0.3, 0.499, 0.501, 3.0, 40.0])
def test_torch_backend_corner_derivatives_sum_to_minus_i_f(spread):
    """sum over corners of f[xj, xj, xk, xl] = -i f[x0, x1, x2] (shift invariance), both branches."""
    from deltamic_core.meshft import _torch_backend as tb

    k2, cen, rel = _random_tile(torch.Generator().manual_seed(int(spread * 1000)), spread)
    (fr, fi), ds = tb._tile_backward(k2, cen, rel)
    sr = sum(d[0] for d in ds)
    si = sum(d[1] for d in ds)
    torch.testing.assert_close(sr, fi, rtol=0, atol=1e-14)  # -i (fr + i fi) = fi - i fr
    torch.testing.assert_close(si, -fr, rtol=0, atol=1e-14)
    fr2, fi2 = tb._tile_forward(k2, cen, rel)
    torch.testing.assert_close(torch.complex(fr2, fi2), torch.complex(fr, fi), rtol=0, atol=1e-15)


@pytest.mark.parametrize("spread", [0.02, 0.1, 0.3, 0.5])
def test_torch_backend_series_and_recursion_agree(spread, monkeypatch):
    """Where both formulations are valid (spread <= the switch), they agree to float64 precision."""
    from deltamic_core.meshft import _torch_backend as tb

    k2, cen, rel = _random_tile(torch.Generator().manual_seed(3), spread)
    monkeypatch.setattr(tb, "SERIES_SPREAD", 1.0001 * spread)
    (sr, si), sd = tb._tile_backward(k2, cen, rel)
    monkeypatch.setattr(tb, "SERIES_SPREAD", 0.0)
    (rr, ri), rd = tb._tile_backward(k2, cen, rel)
    tol3, tol4 = 4e-15 / spread, 4e-15 / spread**2  # recursion error ~ eps / s, eps / s^2
    torch.testing.assert_close(torch.complex(sr, si), torch.complex(rr, ri), rtol=0, atol=tol3)
    for a, b in zip(sd, rd):
        torch.testing.assert_close(torch.complex(*a), torch.complex(*b), rtol=0, atol=tol4)
