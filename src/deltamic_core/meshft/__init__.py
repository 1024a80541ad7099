"""Fourier transform of a triangle mesh carrying a surface density.

    U(k) = sum_t w_t * integral over triangle t of exp(-2 pi i k.x) dS,

for frequencies k in cycles/um and vertices in um (z, y, x); U(0) is the weighted area.
:func:`mesh_ft` is differentiable with respect to the vertices and the weights through one
``torch.autograd.Function`` whose backward calls the backend's analytic backward.

Backends ("auto" picks the first that fits the device): "cuda" / "cpu" (the native extension
``deltamic_core._C``, when built), "torch" (pure torch, any device, exact), and any registered
with :func:`register_backend` (e.g. an approximate "nufft", never picked by "auto").
"""

from __future__ import annotations

import torch

from .._checks import as_tensor, check_faces, check_same_device, check_vertices
from ..grid import GridBand
from ._registry import available_backends, get_backend, register_backend, resolve

__all__ = ["mesh_ft", "available_backends", "register_backend", "get_backend", "memory_estimate_bytes"]


class _MeshFT(torch.autograd.Function):
    """verts, weights -> U. The backend does both directions; nothing here is traced."""

    @staticmethod
    def forward(ctx, verts, weights, faces, freqs, band, backend):
        arg = band if backend.needs_band else freqs
        out = backend.forward(verts, faces, weights, arg)
        ctx.backend = backend
        ctx.arg = arg
        ctx.save_for_backward(verts, weights, faces, freqs)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        verts, weights, faces, freqs = ctx.saved_tensors
        need_v, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_v or need_w):
            return None, None, None, None, None, None
        arg = ctx.arg if ctx.backend.needs_band else freqs
        grad_out = grad_out.to(verts.dtype.to_complex()).contiguous()
        gv, gw = ctx.backend.backward(verts, faces, weights, arg, grad_out)
        return (gv if need_v else None), (gw if need_w else None), None, None, None, None


def _check_freqs(freqs, verts: torch.Tensor):
    """(K, 3) tensor of verts' dtype/device, or a GridBand (converted, kept for band backends)."""
    if isinstance(freqs, GridBand):
        return freqs.freqs(dtype=verts.dtype, device=verts.device), freqs
    if isinstance(freqs, torch.Tensor):
        k = freqs
    else:  # array-likes follow verts; only tensors must match exactly
        k = as_tensor(freqs, "freqs")
        if k.dtype.is_floating_point:
            k = k.to(dtype=verts.dtype, device=verts.device)
    if k.ndim != 2 or k.shape[1] != 3:
        raise ValueError(f"freqs must have shape (K, 3) in cycles/um, (z, y, x) order, got {tuple(k.shape)}")
    if not k.dtype.is_floating_point:
        raise TypeError(f"freqs must be float32 or float64 (cycles/um), got {k.dtype}")
    if k.dtype != verts.dtype:
        raise TypeError(f"freqs dtype {k.dtype} differs from verts dtype {verts.dtype}: convert one of them")
    if k.requires_grad:
        raise ValueError(
            "freqs requires grad, but mesh_ft is not differentiable w.r.t. frequencies: pass freqs.detach()"
        )
    check_same_device([("verts", verts), ("freqs", k)])
    if not bool(torch.isfinite(k).all()):
        raise ValueError("freqs contains NaN or Inf")
    return k, None


def _check_weights(weights, verts: torch.Tensor, n_faces: int) -> torch.Tensor:
    if weights is None:
        return torch.ones(n_faces, dtype=verts.dtype, device=verts.device)
    if isinstance(weights, torch.Tensor):
        w = weights
    else:
        w = as_tensor(weights, "weights")
        if w.dtype.is_floating_point:
            w = w.to(dtype=verts.dtype, device=verts.device)
    if w.ndim != 1 or w.shape[0] != n_faces:
        raise ValueError(f"weights must have shape (F,) = ({n_faces},), one intensity per face, got {tuple(w.shape)}")
    if not w.dtype.is_floating_point:
        raise TypeError(f"weights must be float32 or float64, got {w.dtype}")
    if w.dtype != verts.dtype:
        raise TypeError(f"weights dtype {w.dtype} differs from verts dtype {verts.dtype}: convert one of them")
    check_same_device([("verts", verts), ("weights", w)])
    if not bool(torch.isfinite(w).all()):
        raise ValueError("weights contains NaN or Inf")
    return w


def mesh_ft(verts, faces, freqs, weights=None, *, backend: str = "auto") -> torch.Tensor:
    """Fourier transform of the surface density of a triangle mesh.

    Parameters
    ----------
    verts : (V, 3) float32 or float64 tensor
        Vertex positions in um, (z, y, x). Differentiable.
    faces : (F, 3) int64 tensor
        Triangles as vertex indices (any orientation: the transform does not depend on it).
    freqs : (K, 3) tensor of ``verts``' dtype, or :class:`~deltamic_core.grid.GridBand`
        Frequencies in cycles/um, (z, y, x) order. Not differentiable.
    weights : (F,) tensor of ``verts``' dtype, optional
        Intensity per unit area of each triangle (default 1). Differentiable.
    backend : str
        "auto" (native CUDA for CUDA tensors, native CPU if built, else pure torch), or a name
        from :func:`available_backends`.

    Returns
    -------
    (K,) complex64 (float32 input) or complex128 tensor
        U(k) = sum_t w_t * integral_t exp(-2 pi i k.x) dS; U(0) = sum_t w_t * area_t (um^2).
    """
    v = check_vertices(verts, "verts")
    if isinstance(faces, torch.Tensor):  # before check_faces reads the indices
        check_same_device([("verts", v), ("faces", faces)])
    else:
        faces = as_tensor(faces, "faces").to(v.device)
    f = check_faces(faces, v.shape[0], "faces")
    check_same_device([("verts", v), ("faces", f)])
    k, band = _check_freqs(freqs, v)
    w = _check_weights(weights, v, f.shape[0])
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string such as 'auto', got {type(backend).__name__}")
    name, b = resolve(backend, v.device, band=band is not None)
    if b.needs_band and band is None:
        raise ValueError(f"backend: {name!r} needs freqs given as a GridBand (grid frequencies), got a tensor")
    if k.shape[0] == 0:
        # an empty transform, still connected to the graph so backward() works
        return (v.sum() * 0 + w.sum() * 0).to(v.dtype.to_complex()).expand(0).clone()
    return _MeshFT.apply(v.contiguous(), w.contiguous(), f.contiguous(), k.contiguous(), band, b)


def memory_estimate_bytes(
    n_faces: int, n_freqs: int, *, dtype=torch.float32, backend: str = "auto", device="cpu"
) -> float:
    """Peak working memory (bytes) of one forward + backward, for planning (upper bound)."""
    r = torch.finfo(dtype).bits // 8
    per_face = n_faces * (3 * 8 + 8 * 3 * 8 + 4 * r)  # indices, float64 geometry/accumulators, grads
    out = n_freqs * 2 * 2 * r + n_freqs * 3 * 8
    try:
        b = resolve(backend, torch.device(device), announce=False)[1] if backend == "auto" else get_backend(backend)
    except ValueError:
        b = get_backend("torch")
    est = getattr(b, "memory_estimate_bytes", None)
    if est is not None:
        return float(est(n_faces, n_freqs, dtype)) + per_face + out
    return float(per_face + out)
