"""The volume (interior) term on the real-space route: the blurred indicator of the enclosed
region as a splat of surface points.

For a closed surface S around the region V and a separable PSF h(d) = g_z(d_z) g_y(d_y) g_x(d_x),
the image of V is, by the divergence theorem applied to F(y) = (-G_z(x_z - y_z) g_y g_x, 0, 0)
(G_z the cumulative integral of g_z, so that dF_z/dy_z = h(x - y)),

    B(x) = integral_V h(x - y) dy = - integral_S G_z(x_z - y_z) g_y(x_y - y_y) g_x(x_x - y_x) n_z dS,

n the outward unit normal: a surface splat whose z factor is a smoothed step instead of a
Gaussian. With the surface quadrature of the membrane route (points y_j, strengths W_j times
n_z) it is a sum over points, exact to the quadrature and the PSF's truncation like the
membrane image (the integrand is as smooth as the PSF). The step does not have compact support
(a point lights the whole column above it), so it is split, per point, as
G_z = H + (G_z - H) with H(d) = [d > 0]: the Heaviside part is the point's y-x footprint put
into the first voxel above it and summed up along z (one cumulative sum of the image), the rest
is zero beyond the Gaussian's truncation radius (a window like the membrane splat's). The split
changes no value; autograd differentiates the smooth total (the Heaviside part depends on the
point's z only through an integer index, and (G_z - H)' = g_z away from d = 0).

Per-face weights w_t (several regions, see ``fit.fitter.volume_face_weights``) multiply the
faces' n_z dS, as on the Fourier route. Cost: points x (the membrane window + its y-x
footprint) plus one cumulative sum, with no oversampled Fourier grid for an undersampled PSF.
Only the axis-aligned Gaussian kernel is handled (:func:`supports`); other kernels keep the
Fourier route for the volume term.
"""

from __future__ import annotations

import math

import torch

from .realspace import GaussianKernel, _window_size


def supports(plan) -> bool:
    """True when ``plan`` (a :class:`~deltamic_core.render.route.RealPlan`) has a kernel this
    module can integrate (the separable Gaussian, also a coarse level's block average of it)."""
    return plan is not None and isinstance(plan.kernel, GaussianKernel) and plan.sigma_fn is not None


def _cdf(kernel: GaussianKernel, d, s):
    """Cumulative integral from -c s to d of the truncated Gaussian g of ``kernel`` (sigma s;
    the lower limit moves with s, as the truncation does)."""
    Phi = 0.5 * (1.0 + torch.erf(d / (s * math.sqrt(2.0))))
    Phi_lo = 0.5 * math.erfc(kernel.c / math.sqrt(2.0))
    return (Phi - Phi_lo - kernel.phi_c * (d / s + kernel.c)) / kernel.norm


def volume_image(plan, verts, faces, volume_weight):
    """(Z, Y, X) image of the enclosed volume (density ``volume_weight``: a number, or one
    signed weight per face) on ``plan``'s renderer grid; differentiable w.r.t. ``verts``, the
    weights and a learnt sigma."""
    r = plan.r
    kernel = plan.kernel
    v = verts.to(r.dtype)
    faces = faces.long()
    n_faces = faces.shape[0]
    if torch.is_tensor(volume_weight) and volume_weight.ndim == 1:
        if volume_weight.shape[0] != n_faces:
            raise ValueError(f"volume_weight per face must have {n_faces} values, got {volume_weight.shape[0]}")
        vw = volume_weight.to(device=v.device, dtype=r.dtype)
    else:
        vw = torch.full((n_faces,), float(volume_weight), dtype=r.dtype, device=v.device)
    plan.refresh_rule()
    tri = v[faces]
    cross = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=1)
    tiny = torch.finfo(v.dtype).tiny
    nz = cross[:, 0] / torch.sqrt((cross * cross).sum(1).clamp_min(tiny))
    # points and strengths W_j n_z (the quadrature multiplies the weights by the face areas)
    x, s = plan.quadrature.points(v, faces, vw * nz)
    sigma = plan._sigma()
    image = _splat_step(kernel, r.shape, r.spacing_um, r.origin_um, x, s, sigma)
    plan.last_n_points = int(x.shape[0])
    return -image


def _splat_step(kernel, shape, spacing, origin, x, s, sigma):
    """sum_j s_j G_z(x_z - y_jz) g_y(x_y - y_jy) g_x(x_x - y_jx) at the voxel centres."""
    Z, Y, X = (int(n) for n in shape)
    dev, dt = x.device, x.dtype
    radius = kernel.radius(sigma)
    Wz, Wy, Wx = _window_size(radius, spacing)
    sp = torch.tensor(spacing, dtype=dt, device=dev)
    o = torch.tensor(origin, dtype=dt, device=dev)
    rad = torch.tensor(radius, dtype=dt, device=dev)
    # a coarse level's block average (BlockGaussianKernel): the z factor is the mean of B
    # steps displaced by c_m (the plain Gaussian: B = 1, c = 0); kernel.factors averages y, x
    B = int(kernel.block[0])
    shifts = [(m - 0.5 * (B - 1)) * kernel.block_step[0] for m in range(B)]
    with torch.no_grad():
        i0 = torch.floor((x.detach() - o - rad) / sp).to(torch.int64) + 1
        # first voxel strictly above the point along z (x_z - y_z + c > 0): where each
        # Heaviside part starts
        k0 = torch.stack(
            [(torch.floor((x.detach()[:, 0] - c - o[0]) / sp[0]).to(torch.int64) + 1).clamp(0, Z) for c in shifts], 1
        )
        iy = i0[:, 1:2] + torch.arange(Wy, device=dev)[None, :]
        ix = i0[:, 2:3] + torch.arange(Wx, device=dev)[None, :]
        iz = i0[:, 0:1] + torch.arange(Wz, device=dev)[None, :]
        oky = (iy >= 0) & (iy < Y)
        okx = (ix >= 0) & (ix < X)
        okz = (iz >= 0) & (iz < Z)
        keep = oky.any(1) & okx.any(1)
    if not bool(keep.all()):
        sel = torch.nonzero(keep).reshape(-1)
        x, s, i0, k0, iy, ix, iz, oky, okx, okz = (t[sel] for t in (x, s, i0, k0, iy, ix, iz, oky, okx, okz))
    d0 = (i0.to(dt) * sp + o) - x  # displacement of the first window voxel, differentiable in x
    (_, _, _), (gy, _, _), (gx, _, _) = kernel.factors(d0, spacing, (Wz, Wy, Wx), sigma, radius)
    gy = gy * oky
    gx = gx * okx
    foot = (s[:, None, None] * gy[:, :, None]) * gx[:, None, :]  # (P, Wy, Wx)
    iyc, ixc = iy.clamp(0, Y - 1), ix.clamp(0, X - 1)
    yx = iyc[:, :, None] * X + ixc[:, None, :]  # (P, Wy, Wx)
    # Heaviside parts: the footprint (/ B) from voxel k0 up (a cumulative sum over z)
    step = torch.zeros((Z + 1) * Y * X, dtype=dt, device=dev)
    part = (foot / B).reshape(-1)
    for m in range(B):
        step = step.index_add(0, (k0[:, m, None, None] * (Y * X) + yx).reshape(-1), part)
    image = torch.cumsum(step.reshape(Z + 1, Y, X)[:Z], dim=0)
    # the compact rest G_z - H over the z window
    t = torch.arange(Wz, device=dev, dtype=dt)
    sz, rz = sigma[0], kernel.gaussian_radius(sigma)[0]
    zero = torch.zeros((), dtype=dt, device=dev)
    rest = 0.0
    for c in shifts:
        dz = d0[:, 0:1] + t[None, :] * sp[0] + c
        rest = rest + torch.where(dz.abs() <= rz, _cdf(kernel, dz, sz) - (dz > 0).to(dt), zero)
    rest = rest * okz / B
    izc = iz.clamp(0, Z - 1)
    idx = izc[:, :, None, None] * (Y * X) + yx[:, None, :, :]  # (P, Wz, Wy, Wx)
    vals = rest[:, :, None, None] * foot[:, None, :, :]
    comp = torch.zeros(Z * Y * X, dtype=dt, device=dev).index_add(0, idx.reshape(-1), vals.reshape(-1))
    return image + comp.reshape(Z, Y, X)
