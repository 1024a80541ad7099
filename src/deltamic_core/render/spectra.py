"""Pieces of the volume (luminal) spectrum.

The indicator chi of the region enclosed by a closed, outward-oriented mesh has, by the
divergence theorem applied to the field k exp(-2 pi i k.x) (whose divergence is
-2 pi i |k|^2 exp(-2 pi i k.x)),

    chi^(k) = i / (2 pi |k|^2) * sum_t (k . n_t) * integral_t exp(-2 pi i k.x) dS,

n_t the unit outward normal of triangle t, and chi^(0) = the enclosed volume. The sum is three
surface transforms with per-face weights n_{t,a} (a = z, y, x), so it is differentiable
w.r.t. the vertices through both the triangles and the normals.
"""

from __future__ import annotations

import math

import torch


def face_unit_normals(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """(F, 3) unit normals of (v1 - v0) x (v2 - v0), (z, y, x) components.

    Degenerate (zero-area) triangles get a zero normal instead of NaN: they contribute nothing
    to any surface integral anyway.
    """
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    n = torch.linalg.cross(b - a, c - a, dim=1)
    norm = torch.linalg.vector_norm(n, dim=1, keepdim=True)
    tiny = torch.finfo(verts.dtype).tiny
    return n / norm.clamp_min(tiny**0.5)


def signed_volume(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Enclosed volume (um^3) of a closed mesh, positive for outward normals (float64 sums)."""
    v = verts.to(torch.float64)
    a, b, c = v[faces[:, 0]], v[faces[:, 1]], v[faces[:, 2]]
    return (a * torch.linalg.cross(b, c, dim=1)).sum() / 6.0


def volume_spectrum_from_parts(
    parts, freqs: torch.Tensor, k2_safe: torch.Tensor, is_dc: torch.Tensor, volume: torch.Tensor
) -> torch.Tensor:
    """Combine the three normal-weighted surface transforms into chi^(k).

    Parameters
    ----------
    parts : sequence of three (K,) complex tensors
        mesh_ft with weights n_z, n_y, n_x.
    freqs : (K, 3) real tensor, cycles/um
    k2_safe : (K,) real tensor
        |k|^2 with the zero frequency replaced by 1 (avoids 0/0 in the graph).
    is_dc : (K,) bool tensor
        Where k = 0.
    volume : scalar tensor
        Enclosed volume, used at k = 0.
    """
    kdotn = parts[0] * freqs[:, 0] + parts[1] * freqs[:, 1] + parts[2] * freqs[:, 2]
    chi = kdotn * (1j / (2.0 * math.pi)) / k2_safe
    if bool(is_dc.any()):
        chi = torch.where(is_dc, volume.to(chi.dtype), chi)
    return chi
