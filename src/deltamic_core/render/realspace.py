"""Real-space route of the renderer: surface quadrature points splatted with the PSF.

The image at the voxel centres x_n is

    I(x_n) = sum_t w_t * integral_t h(x_n - y) dS(y)  ~=  sum_j W_j h(x_n - y_j),

with y_j the quadrature points of the triangles and W_j = w_t * area_t * (rule weight). The PSF
h is truncated to its compact support (a box of half-widths ``radius_um``), so each point
touches a fixed window of voxels per axis: cost = points x window voxels, independent of how
finely the PSF would have to be sampled in Fourier space (an undersampled PSF, narrower than
the voxels, is the cheap case here and the expensive one for alias folding).

It is the same continuous image as the Fourier route (point samples of the blurred surface),
exact to the quadrature and the truncation:

- quadrature: per triangle the conical Gauss rule of :mod:`deltamic_core.meshft.nufft_backend`
  whose order resolves the phase span of the frequencies the PSF passes, each frequency
  weighted by the OTF there (the error of a frequency where |OTF| = o needs to be below
  ``tol / o`` only), so the point density follows the PSF's width, not the band's edge;
- truncation: the PSF beyond ``radius_um`` (Gaussian: where it is below ``trunc`` of its peak).

Kernels:

- :class:`GaussianKernel` (axis-aligned :class:`~deltamic_core.psf.GaussianPSF`): separable,
  three 1D Gaussians per point; differentiable w.r.t. the point positions, weights and sigma
  (so a learnt PSF keeps its gradient on this route);
- :class:`BlockGaussianKernel` (a coarse level's block-averaged axis-aligned Gaussian): the
  mean of a few shifted Gaussians per axis, as separable and differentiable as the Gaussian;
- :class:`TableKernel` (any PSF whose real-space values can be computed: a full-covariance
  Gaussian, a :class:`~deltamic_core.psf.MeasuredPSF`): the PSF tabulated once per plan on a
  lattice ``q`` times finer than the voxels, read by trilinear interpolation in the point's
  sub-voxel position (a "polyphase" table: one row of window values per sub-voxel phase).
  Differentiable w.r.t. positions and weights.

Gradients: the adjoint of the splat is a gather of the image gradient over each point's window,
contracted with the PSF (weights) and its derivative (positions), chained to the vertices by
autograd through the point-generation map (barycentric combinations, areas).

Everything is torch (index_add_ / gather on flat int64 indices, chunked to bound memory), so it
runs on any device.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..meshft.nufft_backend import _TOLS, _subdivided_rule, rule_for_spans

# points per chunk (memory ~ chunk x window x 24 bytes)
_CHUNK_ELEMS = 1 << 22


# ---------------------------------------------------------------------------------------
# quadrature
# ---------------------------------------------------------------------------------------
def otf_weighted_rows(kmax_at_level, tol: float, floor: float):
    """(row tolerance, per-axis |k| extent) pairs for :class:`SurfaceQuadrature`.

    A frequency where |OTF| = o needs a quadrature error below tol / o: the frequencies with
    o > tol / t_{r-1} need the error t_r of table row r (t_{-1} = 1: a frequency whose allowed
    error exceeds its own size needs nothing; ``floor``, the band threshold, bounds the set).
    ``kmax_at_level(o)`` returns the per-axis largest |k| where |OTF| > o (None when no
    frequency is).
    """
    rows = []
    prev = 1.0
    # the rows above 1e-2 (0.5 ... 0.02) measured no win here: on the embryo's 1.4 um faces the
    # finer staircase needed more points for the same image error than this one
    for t in _TOLS[_TOLS <= 1e-2]:
        level = max(floor, tol / prev)
        if level >= 1:
            break
        k = kmax_at_level(level)
        if k is not None:
            rows.append((float(max(t, tol)), np.asarray(k, dtype=np.float64)))
        if t <= tol:
            break
        prev = t
    return rows


class SurfaceQuadrature:
    """Quadrature points of a triangle mesh for a PSF: see the module docstring.

    Parameters
    ----------
    rows : list of (tolerance, kmax (3,))
        From :func:`otf_weighted_rows`.
    """

    def __init__(self, rows):
        self.rows = [(float(t), np.asarray(k, dtype=np.float64)) for t, k in rows]

    def orders(self, tri: torch.Tensor):
        """Rule order and subdivision per face (numpy int arrays)."""
        t = tri.detach().to(torch.float64).cpu().numpy()
        e = t[:, [1, 2, 0]] - t  # (F, 3 edges, 3); in numpy: torch's fancy index cost ~12 ms here
        # largest phase span over the edges for frequencies in the ellipsoid-like set of per-axis
        # extents k: 2 pi sqrt(sum_a (k_a e_a)^2); every row's requirement met with the fewest points
        reqs = [(2 * np.pi * np.sqrt(((e * k[None, None, :]) ** 2).sum(-1)).max(1), t) for t, k in self.rows]
        if not reqs:
            return np.ones(len(e), dtype=np.int64), np.ones(len(e), dtype=np.int64)
        order, sub = rule_for_spans(reqs)
        return order, sub

    def points(self, verts: torch.Tensor, faces: torch.Tensor, weights: torch.Tensor):
        """Points (P, 3) and strengths (P,), differentiable w.r.t. ``verts`` and ``weights``."""
        tri = verts[faces]  # (F, 3, 3)
        n = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=1)
        tiny = torch.finfo(verts.dtype).tiny
        area = 0.5 * torch.sqrt((n * n).sum(1).clamp_min(tiny))
        strength = weights * area
        order, sub = self.orders(tri)
        keys = order * 1000 + sub
        xs, ss = [], []
        for key in np.unique(keys):
            idx = torch.from_numpy(np.nonzero(keys == key)[0]).to(verts.device)
            lam, w = _subdivided_rule(int(key // 1000), int(key % 1000))
            lam = torch.as_tensor(lam, dtype=verts.dtype, device=verts.device)
            w = torch.as_tensor(w, dtype=verts.dtype, device=verts.device)
            xs.append(torch.einsum("qc,fcd->fqd", lam, tri[idx]).reshape(-1, 3))
            ss.append((strength[idx, None] * w[None, :]).reshape(-1))
        return torch.cat(xs), torch.cat(ss)

    def face_rules(self, tri: torch.Tensor):
        """Per-face rule index (F,) int64 and the rule table: start (R + 1,) int64, barycentric
        nodes (Q, 3) and weights (Q,) float64 (CPU tensors) for the native splat."""
        order, sub = self.orders(tri)
        keys = order * 1000 + sub
        uniq, inv = np.unique(keys, return_inverse=True)
        rules = [_rule(int(k // 1000), int(k % 1000)) for k in uniq]
        start = np.concatenate([[0], np.cumsum([len(w) for _, w in rules])]).astype(np.int64)
        lam = np.concatenate([lam for lam, _ in rules]) if rules else np.zeros((0, 3))
        w = np.concatenate([w for _, w in rules]) if rules else np.zeros(0)
        n_points = int(np.diff(start)[inv].sum()) if rules else 0
        return (
            torch.from_numpy(inv.astype(np.int64).reshape(-1)),
            torch.from_numpy(start),
            torch.from_numpy(np.ascontiguousarray(lam, dtype=np.float64)),
            torch.from_numpy(np.ascontiguousarray(w, dtype=np.float64)),
            n_points,
        )

    def count(self, verts, faces) -> int:
        """Number of points the rule would use (no tensors built)."""
        order, sub = self.orders(torch.as_tensor(verts)[torch.as_tensor(faces).long()])
        return int((order.astype(np.int64) ** 2 * sub.astype(np.int64) ** 2).sum())


_RULES: dict = {}


def _rule(order: int, sub: int):
    key = (order, sub)
    if key not in _RULES:
        _RULES[key] = _subdivided_rule(order, sub)
    return _RULES[key]


# ---------------------------------------------------------------------------------------
# geometry of the windows
# ---------------------------------------------------------------------------------------
class _Windows:
    """Per-point window placement on the image lattice (padded by the window on every side)."""

    def __init__(self, shape, spacing, origin, window, device):
        self.shape = tuple(int(n) for n in shape)
        self.spacing = tuple(float(s) for s in spacing)
        self.origin = tuple(float(o) for o in origin)
        self.window = tuple(int(w) for w in window)
        self.padded = tuple(n + 2 * w for n, w in zip(self.shape, self.window))
        Wz, Wy, Wx = self.window
        _, Yp, Xp = self.padded
        tz = torch.arange(Wz, device=device)
        ty = torch.arange(Wy, device=device)
        tx = torch.arange(Wx, device=device)
        self.offsets = ((tz[:, None, None] * Yp + ty[None, :, None]) * Xp + tx[None, None, :]).reshape(-1)
        self.row_offsets = ((tz[:, None] * Yp + ty[None, :]) * Xp).reshape(-1)
        n = math.prod(self.padded)
        # the adjoint gathers whole x-rows of Wx values from a strided (unfolded) view of the
        # gradient: Wx times fewer indices
        self.rows = True
        self.index_dtype = torch.int32 if n < 2**31 - 1 else torch.int64
        self.device = device

    def place(self, x: torch.Tensor, radius):
        """First window voxel i0 (P, 3) int64, displacement of that voxel from the point
        d0 = x_{i0} - y (P, 3) (in (-r, -r + s]), flat padded base index (P,), and the mask of
        points whose window meets the image."""
        sp = torch.tensor(self.spacing, dtype=x.dtype, device=x.device)
        o = torch.tensor(self.origin, dtype=x.dtype, device=x.device)
        r = torch.tensor(radius, dtype=x.dtype, device=x.device)
        xd = x.detach()
        i0 = torch.floor((xd - o - r) / sp).to(torch.int64) + 1
        d0 = (i0.to(x.dtype) * sp + o) - x  # differentiable in x (i0 is piecewise constant)
        n = torch.tensor(self.shape, device=x.device)
        w = torch.tensor(self.window, device=x.device)
        keep = ((i0 <= n - 1) & (i0 + w - 1 >= 0)).all(1)
        _, Yp, Xp = self.padded
        Wz, Wy, Wx = self.window
        base = ((i0[:, 0] + Wz) * Yp + (i0[:, 1] + Wy)) * Xp + (i0[:, 2] + Wx)
        return i0, d0, base, keep

    def crop(self, buf: torch.Tensor) -> torch.Tensor:
        Wz, Wy, Wx = self.window
        Z, Y, X = self.shape
        return buf.reshape(self.padded)[Wz : Wz + Z, Wy : Wy + Y, Wx : Wx + X]

    def pad(self, img: torch.Tensor) -> torch.Tensor:
        Wz, Wy, Wx = self.window
        out = torch.zeros(self.padded, dtype=img.dtype, device=img.device)
        Z, Y, X = self.shape
        out[Wz : Wz + Z, Wy : Wy + Y, Wx : Wx + X] = img
        return out.reshape(-1)


def _window_size(radius, spacing):
    # voxels x_i = i0 s + ... with x_i - y in (-r, r]: at most floor(2 r / s) + 1 of them
    return tuple(int(math.floor(2 * r / s + 1e-9)) + 1 for r, s in zip(radius, spacing))


# ---------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------
class GaussianKernel:
    """Separable truncated Gaussian: per axis, for |d| <= r = c sigma,

        g(d) = (G(d; sigma) - G(r; sigma)) / n(c),   n(c) = erf(c / sqrt 2) - 2 c phi(c),

    G the normalised Gaussian, phi the standard normal density: continuous at the support's
    edge (a point moving across it changes the image continuously, so gradients hold) and of
    unit integral. c = sqrt(2 ln(1 / trunc)): the PSF there is ``trunc`` of its peak per axis.
    r follows the current sigma at every call (a learnt sigma may grow).
    """

    separable = True
    #: block-average samples per axis and their spacing (um): 1 and 0 for a plain Gaussian
    block = (1, 1, 1)
    block_step = (0.0, 0.0, 0.0)

    def __init__(self, psf, trunc: float = 3e-4):
        self.psf = psf
        self.trunc = float(trunc)
        self.c = math.sqrt(2 * math.log(1 / self.trunc))
        phi = math.exp(-0.5 * self.c**2) / math.sqrt(2 * math.pi)
        self.phi_c = phi
        self.norm = math.erf(self.c / math.sqrt(2)) - 2 * self.c * phi

    def radius(self, sigma: torch.Tensor):
        """Half-width of the kernel's support per axis (um)."""
        return self.gaussian_radius(sigma)

    def gaussian_radius(self, sigma: torch.Tensor):
        """Half-width of one Gaussian's support per axis (its cut; :meth:`radius` here)."""
        return tuple(float(s) * self.c for s in sigma.detach().cpu())

    def factors(self, d0, spacing, window, sigma, radius, need_deriv=False, need_sigma=False):
        """Per axis: g (P, W_a), and optionally dg/dd and dg/dsigma."""
        out = []
        zero = torch.zeros((), dtype=d0.dtype, device=d0.device)
        for a in range(3):
            t = torch.arange(window[a], device=d0.device, dtype=d0.dtype)
            d = d0[:, a : a + 1] + t[None, :] * spacing[a]
            s = sigma[a]
            inside = d.abs() <= radius[a]
            G = torch.exp(-0.5 * (d / s) ** 2) / (math.sqrt(2 * math.pi) * s)
            g = torch.where(inside, (G - self.phi_c / s) / self.norm, zero)
            dd = torch.where(inside, -G * d / (s * s) / self.norm, zero) if need_deriv else None
            ds = (
                torch.where(inside, (G * ((d * d) / (s * s * s) - 1.0 / s) + self.phi_c / (s * s)) / self.norm, zero)
                if need_sigma
                else None
            )
            out.append((g, dd, ds))
        return out


class BlockGaussianKernel(GaussianKernel):
    """A coarse level's PSF on the real-space route: an axis-aligned Gaussian followed by the
    mean of ``block`` fine samples spaced ``block_step`` per axis
    (:class:`~deltamic_core.psf.BlockAveragedPSF`). Per axis the factor is the mean of
    ``block`` truncated Gaussians (:class:`GaussianKernel`) displaced by c_m = (m - (B - 1) / 2)
    x step: g_B(d) = (1/B) sum_m g(d + c_m); its support reaches r + (B - 1) step / 2. The sigma
    handed in is the Gaussian's (the wrapper's extra blur already folded in by the caller:
    sqrt(sigma^2 + blur^2)). Separable and exact, so a learnt sigma keeps its gradient.
    """

    def __init__(self, psf, block: int, block_step, trunc: float = 3e-4):
        super().__init__(psf, trunc=trunc)
        self.block = (int(block),) * 3
        self.block_step = tuple(float(s) for s in block_step)
        self._half = tuple(0.5 * (b - 1) * s for b, s in zip(self.block, self.block_step))

    def radius(self, sigma: torch.Tensor):
        return tuple(r + h for r, h in zip(self.gaussian_radius(sigma), self._half))

    def factors(self, d0, spacing, window, sigma, radius, need_deriv=False, need_sigma=False):
        rc = self.gaussian_radius(sigma)
        B = self.block[0]
        acc = None
        for m in range(B):
            c = torch.tensor([(m - 0.5 * (B - 1)) * s for s in self.block_step], dtype=d0.dtype, device=d0.device)
            part = GaussianKernel.factors(self, d0 + c, spacing, window, sigma, rc, need_deriv, need_sigma)
            acc = (
                part
                if acc is None
                else [tuple(None if u is None else u + v for u, v in zip(A, P)) for A, P in zip(acc, part)]
            )
        return [tuple(None if u is None else u / B for u in A) for A in acc]


class TableKernel:
    """Any PSF tabulated on a lattice ``q`` times finer than the voxels (trilinear reads).

    ``values(disp_z, disp_y, disp_x)`` must return the PSF (1/um^3) on the outer product of the
    three 1D displacement arrays (um).
    """

    separable = False

    def __init__(self, values, radius_um, spacing_um, q, dtype, device):
        self.radius_um = tuple(float(r) for r in radius_um)
        self.spacing = tuple(float(s) for s in spacing_um)
        self.q = tuple(int(v) for v in q)
        self.window = _window_size(self.radius_um, self.spacing)
        disp = []
        for r, s, q_, W in zip(self.radius_um, self.spacing, self.q, self.window):
            h = s / q_
            m = np.arange(W * q_ + 2)
            disp.append(-r + m * h)  # window voxel t at phase u: displacement -r + (u + t) s
        T = torch.as_tensor(np.asarray(values(*disp), dtype=np.float64))
        # zero outside the support (|d| <= r), like the Gaussian kernel's truncation
        for a, d in enumerate(disp):
            mask = torch.as_tensor(np.abs(d) <= self.radius_um[a] * (1 + 1e-12))
            shape = [1, 1, 1]
            shape[a] = -1
            T = T * mask.reshape(shape)
        self.peak = float(T.abs().max())
        # polyphase rows: phase m_a in 0..q_a+1, window t_a: T[t_z q_z + m_z, ...]
        Wz, Wy, Wx = self.window
        qz, qy, qx = self.q
        iz = torch.arange(Wz)[None, :] * qz + torch.arange(qz + 2)[:, None]  # (qz+2, Wz)
        iy = torch.arange(Wy)[None, :] * qy + torch.arange(qy + 2)[:, None]
        ix = torch.arange(Wx)[None, :] * qx + torch.arange(qx + 2)[:, None]
        P = T[iz[:, None, None, :, None, None], iy[None, :, None, None, :, None], ix[None, None, :, None, None, :]]
        self.table = P.reshape((qz + 2) * (qy + 2) * (qx + 2), Wz * Wy * Wx).to(dtype=dtype, device=device).contiguous()
        self.phases = (qz + 2, qy + 2, qx + 2)

    def radius(self, sigma=None):
        return self.radius_um

    def corners(self, d0):
        """Rows (P, 8) of the table and trilinear weights (P, 8) and their phase derivatives
        (P, 8, 3) for points with first-voxel displacement d0."""
        dev, dt = d0.device, d0.dtype
        r = torch.tensor(self.radius_um, dtype=dt, device=dev)
        s = torch.tensor(self.spacing, dtype=dt, device=dev)
        q = torch.tensor(self.q, dtype=dt, device=dev)
        u = (d0 + r) / s * q  # in (0, q]
        m0 = torch.floor(u.detach()).clamp(min=0)
        m0 = torch.minimum(m0, q)
        phi = u - m0
        m0 = m0.to(torch.int64)
        pz, py, px = self.phases
        rows, wts, dws = [], [], []
        for cz in (0, 1):
            for cy in (0, 1):
                for cx in (0, 1):
                    c = torch.tensor([cz, cy, cx], dtype=dt, device=dev)
                    rows.append(((m0[:, 0] + cz) * py + (m0[:, 1] + cy)) * px + (m0[:, 2] + cx))
                    f = torch.where(c.bool(), phi, 1 - phi)  # (P, 3)
                    sign = 2 * c - 1
                    wts.append(f.prod(1))
                    dws.append(
                        torch.stack(
                            [sign[0] * f[:, 1] * f[:, 2], sign[1] * f[:, 0] * f[:, 2], sign[2] * f[:, 0] * f[:, 1]], 1
                        )
                    )
        # d phi / d x = -q / s (d0 = x_i0 - y)
        return torch.stack(rows, 1), torch.stack(wts, 1), torch.stack(dws, 1) * (-q / s)


# ---------------------------------------------------------------------------------------
# the splat and its adjoint
# ---------------------------------------------------------------------------------------
def _chunks(n_points, window, factor=1):
    per = max(1, _CHUNK_ELEMS // max(1, factor * math.prod(window)))
    return range(0, n_points, per), per


def _splat_forward(kernel, win, x, s, sigma):
    radius = kernel.radius(sigma)
    n = math.prod(win.padded)
    # a flat scatter: index_add_ of whole (Wx,) rows into an (N, Wx) buffer measured slower
    buf = torch.zeros(n, dtype=x.dtype, device=x.device)
    with torch.no_grad():
        _, d0, base, keep = win.place(x, radius)
        if not bool(keep.all()):
            sel = torch.nonzero(keep).reshape(-1)
            d0, base, s = d0[sel], base[sel], s[sel]
        base = base.to(win.index_dtype)
        offs = win.offsets.to(win.index_dtype)
        starts, per = _chunks(len(base), win.window, 1 if kernel.separable else 8)
        for a in starts:
            b = slice(a, a + per)
            idx = (base[b, None] + offs[None, :]).reshape(-1)
            if kernel.separable:
                (gz, _, _), (gy, _, _), (gx, _, _) = kernel.factors(d0[b], win.spacing, win.window, sigma, radius)
                blk = ((s[b, None] * gz)[:, :, None, None] * gy[:, None, :, None]) * gx[:, None, None, :]
            else:
                rows, w, _ = kernel.corners(d0[b])
                blk = torch.bmm((w * s[b, None]).unsqueeze(1), kernel.table[rows]).squeeze(1)
            buf.index_add_(0, idx, blk.reshape(-1))
    return win.crop(buf)


def _splat_backward(kernel, win, x, s, sigma, grad, need_sigma):
    radius = kernel.radius(sigma)
    gbuf = win.pad(grad)
    gx_out = torch.zeros_like(x)
    gs_out = torch.zeros_like(s)
    gsig = torch.zeros(3, dtype=x.dtype, device=x.device) if need_sigma else None
    with torch.no_grad():
        _, d0, base, keep = win.place(x, radius)
        sel = torch.nonzero(keep).reshape(-1)
        d0, base, sk = d0[sel], base[sel], s[sel]
        Wz, Wy, Wx = win.window
        base = base.to(win.index_dtype)
        if win.rows:
            # overlapping rows gbuf[r : r + Wx] (a strided view, no copy)
            unf = gbuf.unfold(0, Wx, 1)
            offs = win.row_offsets.to(win.index_dtype)
        else:
            offs = win.offsets.to(win.index_dtype)
        starts, per = _chunks(len(base), win.window, 1 if kernel.separable else 8)
        for a in starts:
            b = slice(a, a + per)
            idx = (base[b, None] + offs[None, :]).reshape(-1)
            vals = (unf[idx] if win.rows else gbuf[idx]).reshape(len(d0[b]), -1)  # (Pc, W)
            if kernel.separable:
                (gz, dz, sz), (gy, dy, sy), (gx, dx, sx) = kernel.factors(
                    d0[b], win.spacing, win.window, sigma, radius, need_deriv=True, need_sigma=need_sigma
                )
                v = vals.reshape(-1, Wz * Wy, Wx)
                xs = [gx, dx] + ([sx] if need_sigma else [])
                vx = torch.bmm(v, torch.stack(xs, 2)).reshape(-1, Wz, Wy, len(xs))  # contract x
                A = torch.einsum("pzyk,py->pzk", vx, gy)  # (P, Wz, k): y contracted with g
                By = torch.einsum("pzy,py->pz", vx[..., 0], dy)  # y derivative
                val = torch.einsum("pz,pz->p", A[..., 0], gz)
                ddz = torch.einsum("pz,pz->p", A[..., 0], dz)
                ddy = torch.einsum("pz,pz->p", By, gz)
                ddx = torch.einsum("pz,pz->p", A[..., 1], gz)
                w = sk[b]
                gs_out[sel[b]] = val
                # d/dy = -d/dd (d = x_voxel - y)
                gx_out[sel[b]] = -torch.stack([ddz, ddy, ddx], 1) * w[:, None]
                if need_sigma:
                    Sy = torch.einsum("pzy,py->pz", vx[..., 0], sy)
                    gsig += torch.stack(
                        [
                            (w * torch.einsum("pz,pz->p", A[..., 0], sz)).sum(),
                            (w * torch.einsum("pz,pz->p", Sy, gz)).sum(),
                            (w * torch.einsum("pz,pz->p", A[..., 2], gz)).sum(),
                        ]
                    )
            else:
                rows, wt, dw = kernel.corners(d0[b])
                dots = torch.bmm(kernel.table[rows], vals.unsqueeze(2)).squeeze(2)  # (P, 8)
                gs_out[sel[b]] = (wt * dots).sum(1)
                gx_out[sel[b]] = torch.einsum("pc,pca->pa", dots, dw) * sk[b, None]
    return gx_out, gs_out, gsig


class _Splat(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, s, sigma, kernel, win):
        ctx.kernel, ctx.win = kernel, win
        ctx.save_for_backward(x, s, sigma)
        return _splat_forward(kernel, win, x, s, sigma)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, s, sigma = ctx.saved_tensors
        need_sigma = bool(ctx.needs_input_grad[2]) and ctx.kernel.separable
        gx, gs, gsig = _splat_backward(ctx.kernel, ctx.win, x, s, sigma, grad.contiguous(), need_sigma)
        return gx, gs, gsig, None, None


def splat(kernel, shape, spacing, origin, x, s, sigma=None):
    """Image (Z, Y, X) of point masses ``s`` at ``x`` blurred by ``kernel``, sampled at the
    voxel centres origin + n * spacing. Differentiable w.r.t. x, s (and sigma, Gaussian)."""
    if sigma is None:
        sigma = torch.zeros(3, dtype=x.dtype, device=x.device)
    radius = kernel.radius(sigma)
    window = _window_size(radius, spacing)
    win = _Windows(shape, spacing, origin, window, x.device)
    # points sorted by their window's flat position: the scatter and gather walk memory in order
    with torch.no_grad():
        _, _, base, _ = win.place(x, radius)
        perm = torch.argsort(base)
    return _Splat.apply(x[perm], s[perm], sigma, kernel, win)


# ---------------------------------------------------------------------------------------
# native (C++) splat of whole triangles: Gaussian kernel, CPU
# ---------------------------------------------------------------------------------------
#: use the native kernel when it is available (tests switch it off to compare with torch)
USE_NATIVE = True


def native_module(device):
    """The extension with the splat kernels, or None (not on the CPU, not built, disabled)."""
    if not USE_NATIVE or torch.device(device).type != "cpu":
        return None
    from ..meshft import _native

    try:
        mod = _native.extension()
    except ImportError:
        return None
    return mod if hasattr(mod, "splat_gauss_forward") else None


class _TriSplat(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tri, strength, sigma, mod, kernel, geom, rules):
        ctx.mod, ctx.kernel, ctx.geom, ctx.rules = mod, kernel, geom, rules
        ctx.save_for_backward(tri, strength, sigma)
        return mod.splat_gauss_forward(
            tri, strength, *rules, *geom, kernel.phi_c, kernel.norm, list(kernel.block), list(kernel.block_step)
        )

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        tri, strength, sigma = ctx.saved_tensors
        need_sigma = bool(ctx.needs_input_grad[2])
        gt, gs, gsig = ctx.mod.splat_gauss_backward(
            tri,
            strength,
            *ctx.rules,
            grad.contiguous(),
            *ctx.geom,
            ctx.kernel.phi_c,
            ctx.kernel.norm,
            need_sigma,
            list(ctx.kernel.block),
            list(ctx.kernel.block_step),
        )
        return gt, gs, (gsig.to(sigma.dtype) if need_sigma else None), None, None, None, None


def splat_triangles(mod, kernel, quadrature, shape, spacing, origin, verts, faces, weights, sigma):
    """Image of the triangles (native kernel): same sums as :func:`splat` of
    ``quadrature.points``, without materialising the points. Returns (image, n_points)."""
    tri, strength, rules, n_points = _sorted_triangles(quadrature, shape, spacing, origin, verts, faces, weights)
    window = _window_size(kernel.radius(sigma), spacing)
    geom = (
        [int(v) for v in shape],
        [float(v) for v in spacing],
        [float(v) for v in origin],
        [float(v) for v in sigma.detach().cpu()],
        [float(v) for v in kernel.gaussian_radius(sigma)],  # the native side adds the block's reach
        [int(v) for v in window],
    )
    img = _TriSplat.apply(tri, strength, sigma, mod, kernel, geom, rules)
    return img, n_points


# ---------------------------------------------------------------------------------------
# low-rank separable table kernel (a sampled PSF: MeasuredPSF), native CPU splat
# ---------------------------------------------------------------------------------------
class LowRankTableKernel:
    """A sampled PSF as a sum of ``rank`` separable terms (:mod:`.lowrank`), each factor a
    cubic Hermite table (values and derivatives of the factor's sinc interpolant on a lattice
    of step dh_a = h_a / q_a, ~1/8 of the sample spacing), zero beyond the term's reach (where
    the term falls below ``trunc`` of the peak; the last table interval ramps it to zero, so the
    kernel is continuous). Splatted by the native ``splat_table_forward``/``backward``
    (``csrc/meshft/splat_table_kernels.h``); the pure-torch fallback is the sum of the terms'
    separable splats (:class:`_TermKernel`), the native kernel's reference in the tests.

    ``max_error``: the decomposition's largest sample error plus the tables' interpolation
    error (both relative to the PSF's peak).
    """

    separable = False

    def __init__(self, terms, spacing_um, *, trunc: float = 3e-4, nodes_per_sample: int = 8):
        from .lowrank import sinc_interp

        self.terms = terms
        self.spacing = tuple(float(s) for s in spacing_um)
        peak = terms.peak
        R = terms.rank
        # first pass: the factors on a fine grid, for each term's reach per axis
        fine = []
        for a in range(3):
            s0, c = terms.spacing[a], terms.coords[a]
            ext = float(np.abs(c).max()) + s0
            x = np.arange(-ext, ext + 1e-12, s0 / nodes_per_sample)
            v, _ = sinc_interp(terms.factors[a], c, s0, x)
            fine.append((x, v))
        amax = np.stack([np.abs(v).max(1) for _, v in fine])  # (3, R)
        self.q, dh, reach = [], [], np.zeros((3, R))
        for a in range(3):
            s0 = terms.spacing[a]
            q = max(1, int(math.ceil(self.spacing[a] / (s0 / nodes_per_sample) - 1e-9)))
            self.q.append(q)
            dh.append(self.spacing[a] / q)
            x, v = fine[a]
            others = np.prod(np.delete(amax, a, axis=0), axis=0)  # (R,)
            for r in range(R):
                sig = np.abs(v[r]) * others[r] > trunc * peak
                last = float(np.abs(x[sig]).max()) if sig.any() else 0.0
                reach[a, r] = last + dh[a]
        self.radius_um = tuple(float(reach[a].max()) for a in range(3))
        self.window = _window_size(self.radius_um, self.spacing)
        self.reach = reach
        self.dh = tuple(dh)
        vals, ders, herr = [], [], []
        for a in range(3):
            J = self.window[a] * self.q[a] + 2
            x = -self.radius_um[a] + np.arange(J) * dh[a]
            v, d = sinc_interp(terms.factors[a], terms.coords[a], terms.spacing[a], x)
            inside = np.abs(x)[None, :] <= reach[a][:, None] - dh[a] * (1 - 1e-9)
            v, d = np.where(inside, v, 0.0), np.where(inside, d, 0.0)
            vals.append(np.ascontiguousarray(v))
            ders.append(np.ascontiguousarray(d))
            # interpolation error at the mid-nodes (inside the reach), relative to the peak
            xm = x[:-1] + 0.5 * dh[a]
            vm, _ = sinc_interp(terms.factors[a], terms.coords[a], terms.spacing[a], xm)
            hm = 0.5 * (v[:, :-1] + v[:, 1:]) + 0.125 * dh[a] * (d[:, :-1] - d[:, 1:])
            ins = inside[:, :-1] & inside[:, 1:]
            others = np.prod(np.delete(amax, a, axis=0), axis=0)
            herr.append(float((np.abs(hm - vm) * ins * others[:, None]).sum(0).max()) / peak)
        self.values = [torch.from_numpy(v) for v in vals]
        self.derivs = [torch.from_numpy(d) for d in ders]
        self.reach_t = torch.from_numpy(np.ascontiguousarray(reach))
        self.table_error = float(sum(herr))
        self.max_error = float(terms.max_error + self.table_error)

    @property
    def rank(self) -> int:
        return self.terms.rank

    def radius(self, sigma=None):
        return self.radius_um

    def effective_window(self) -> float:
        """Mean window voxels summed over the terms (the splat's cost per point)."""
        per = (2 * self.reach / np.asarray(self.spacing)[:, None]).clip(min=0) + 1  # (3, R)
        return float(np.prod(np.minimum(per, np.asarray(self.window)[:, None]), axis=0).sum())

    def factor(self, a: int, r: int, d: torch.Tensor, need_deriv: bool = False):
        """Term r's factor on axis a (and its derivative) at displacements d (any shape)."""
        v = self.values[a][r].to(dtype=d.dtype, device=d.device)
        D = self.derivs[a][r].to(dtype=d.dtype, device=d.device)
        h = self.dh[a]
        u = (d + self.radius_um[a]) / h
        m = torch.floor(u.detach()).clamp(0, v.shape[0] - 2)
        phi = u - m
        m = m.to(torch.int64)
        f0, f1, s0, s1 = v[m], v[m + 1], h * D[m], h * D[m + 1]
        p2, p3 = phi * phi, phi * phi * phi
        g = (2 * p3 - 3 * p2 + 1) * f0 + (-2 * p3 + 3 * p2) * f1 + (p3 - 2 * p2 + phi) * s0 + (p3 - p2) * s1
        inside = d.abs() <= float(self.reach[a, r])
        zero = torch.zeros((), dtype=d.dtype, device=d.device)
        g = torch.where(inside, g, zero)
        if not need_deriv:
            return g, None
        dg = ((6 * p2 - 6 * phi) * (f0 - f1) + (3 * p2 - 4 * phi + 1) * s0 + (3 * p2 - 2 * phi) * s1) / h
        return g, torch.where(inside, dg, zero)


class _TermKernel:
    """One term of a :class:`LowRankTableKernel` as a separable kernel for :func:`splat`."""

    separable = True

    def __init__(self, kernel, r):
        self.k, self.r = kernel, r

    def radius(self, sigma=None):
        return self.k.radius_um

    def factors(self, d0, spacing, window, sigma, radius, need_deriv=False, need_sigma=False):
        out = []
        for a in range(3):
            t = torch.arange(window[a], device=d0.device, dtype=d0.dtype)
            d = d0[:, a : a + 1] + t[None, :] * spacing[a]
            g, dg = self.k.factor(a, self.r, d, need_deriv)
            out.append((g, dg, None))
        return out


def splat_lowrank_torch(kernel, shape, spacing, origin, x, s):
    """Pure-torch image of points ``x`` (P, 3) with strengths ``s`` for a
    :class:`LowRankTableKernel`: the sum of its terms' separable splats (differentiable)."""
    img = None
    for r in range(kernel.rank):
        part = splat(_TermKernel(kernel, r), shape, spacing, origin, x, s)
        img = part if img is None else img + part
    return img


class _TableTriSplat(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tri, strength, mod, kernel, geom, rules):
        ctx.mod, ctx.kernel, ctx.geom, ctx.rules = mod, kernel, geom, rules
        ctx.save_for_backward(tri, strength)
        k = kernel
        return mod.splat_table_forward(tri, strength, *rules, *geom, k.q, k.values, k.derivs, k.reach_t)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        tri, strength = ctx.saved_tensors
        k = ctx.kernel
        gt, gs = ctx.mod.splat_table_backward(
            tri, strength, *ctx.rules, grad.contiguous(), *ctx.geom, k.q, k.values, k.derivs, k.reach_t
        )
        return gt, gs, None, None, None, None


def _sorted_triangles(quadrature, shape, spacing, origin, verts, faces, weights):
    """Triangles (F, 3, 3), strengths and rules, faces in the order of their centroid's voxel
    (the scatter and gather then walk memory in order; a stable sort: the same faces, the same
    order). The rules are chosen in mesh order."""
    tri = verts[faces]
    n = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=1)
    tiny = torch.finfo(verts.dtype).tiny
    strength = weights * (0.5 * torch.sqrt((n * n).sum(1).clamp_min(tiny)))
    with torch.no_grad():
        c = tri.detach().mean(1)
        sp = torch.tensor(spacing, dtype=c.dtype)
        o = torch.tensor(origin, dtype=c.dtype)
        ijk = torch.floor((c - o) / sp).to(torch.int64)
        key = (ijk[:, 0] * (shape[1] + 2) + ijk[:, 1]) * (shape[2] + 2) + ijk[:, 2]
        perm = torch.argsort(key, stable=True)
    face_rule, start, lam, w, n_points = quadrature.face_rules(tri)
    return (
        tri[perm].contiguous(),
        strength[perm].contiguous(),
        (face_rule[perm].contiguous(), start, lam, w),
        n_points,
    )


def splat_triangles_table(mod, kernel, quadrature, shape, spacing, origin, verts, faces, weights):
    """Image of the triangles with a :class:`LowRankTableKernel` (native kernel): the same sums
    as :func:`splat_lowrank_torch` of ``quadrature.points``. Returns (image, n_points)."""
    tri, strength, rules, n_points = _sorted_triangles(quadrature, shape, spacing, origin, verts, faces, weights)
    geom = (
        [int(v) for v in shape],
        [float(v) for v in spacing],
        [float(v) for v in origin],
        [float(v) for v in kernel.radius_um],
        [int(v) for v in kernel.window],
    )
    return _TableTriSplat.apply(tri, strength, mod, kernel, geom, rules), n_points
