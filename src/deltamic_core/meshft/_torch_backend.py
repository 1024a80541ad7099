"""Pure-torch mesh Fourier transform: exact, runs on any device, bounded memory.

The transform of one triangle (a, b, c) of area A at frequency k (cycles/um) is

    integral_T exp(-2 pi i k.x) dS = 2A * f[pa, pb, pc],   f(z) = -exp(-i z),

with pa = 2 pi k.a etc. and f[., ., .] the second divided difference (Hermite-Genocchi). The
phases reach hundreds of radians while their differences inside a triangle are small, so every
(frequency, triangle) pair is evaluated around the triangle's centroid g:

    f[pa, pb, pc] = exp(-i theta) * f[x0, x1, x2],   theta = 2 pi k.g,  xj = 2 pi k.(vj - g),

(shift invariance f[x + s] = exp(-i s) f[x]). The centred nodes xj are computed from centred
coordinates (no cancellation of large phases) and sum to zero. The local divided difference uses

* for a small spread s = max |xi - xj| < ``SERIES_SPREAD``, the Taylor series
  f[x0, x1, x2] = sum_n (-i)^n h_n(x) / (n + 2)!, with h_n the complete homogeneous symmetric
  polynomials (recurrence h_n = -e2 h_{n-2} + e3 h_{n-3} for nodes of zero sum);
* otherwise the recursion on the extreme pair (p, q) and the middle node m,
  f[p, m, q] = (f[p, m] - f[m, q]) / (xp - xq), where f[u, v] = i exp(-i (u+v)/2) sinc((u-v)/2)
  is stable at any separation and the denominator is the spread itself.

Gradients use d f[pa, pb, pc] / d pa = f[pa, pa, pb, pc] (third divided difference with a
repeated node) from the same two formulations (series with (n + 3)!, or the extreme-pair
recursion with f[u, u, v] = d/du f[u, v]), plus the gradient of the area.

All arithmetic is float64 whatever the input dtype: on the torch path this costs little and
makes float32 results exact to their own rounding. Work is tiled over (frequencies x faces) so
the temporaries stay below ``max_bytes`` whatever K and F are.
"""

from __future__ import annotations

import math

import torch

TWO_PI = 2.0 * math.pi

#: spread of the centred phases (radians) below which the Taylor series is used.
SERIES_SPREAD = 0.5
#: |y| below which sinc'(y) uses its series (the closed form loses ~eps / y^2 relative).
_DSINC_SERIES_Y = 0.1
#: default bound on the temporaries of one tile, bytes.
DEFAULT_MAX_BYTES = 256 * 2**20
# float64 temporaries alive at once per (frequency, face) pair (measured upper bounds, with slack)
_BYTES_PER_PAIR_FORWARD = 8 * 28
_BYTES_PER_PAIR_BACKWARD = 8 * 60
# tiles much larger than the caches only add memory traffic
_MAX_PAIRS_PER_TILE = 1 << 16


def _series_terms(spread: float, order: int, tol: float = 1e-17) -> int:
    """Number of Taylor terms so that the tail is below ``tol`` relative.

    Centred nodes satisfy |xj| <= 2 s / 3; |h_n| <= C(n + order, order) r^n, and
    C(n + order, order) / (n + order)! = 1 / (order! n!), so the n-th term is at most
    r^n / (order! n!) while the value is about 1 / order!.
    """
    r = 2.0 * spread / 3.0
    n = 0
    while r ** (n + 1) / math.factorial(n + 1) > tol:
        n += 1
    return n + 1


_N_MAX = _series_terms(1.0, 2) + 1
_INV_FACT = [1.0 / math.factorial(n) for n in range(_N_MAX + 4)]


def _n_terms(spread: float) -> int:
    """Terms for the largest spread of a tile's series pairs (fewer for tiny triangles).
    The repeated-node sums get one more (|xj| <= 2 s / 3 holds for the repeated node too)."""
    bucket = 2.0 ** math.ceil(math.log2(max(spread, 1e-12)))
    return _series_terms_cached(bucket)


_terms_cache: dict = {}


def _series_terms_cached(bucket: float) -> int:
    n = _terms_cache.get(bucket)
    if n is None:
        n = _terms_cache[bucket] = min(_N_MAX, _series_terms(bucket, 2))
    return n


# ---------------------------------------------------------------------------------------------
# per-face geometry
# ---------------------------------------------------------------------------------------------
class _FaceGeometry:
    """float64 per-face quantities shared by forward and backward."""

    def __init__(self, verts: torch.Tensor, faces: torch.Tensor):
        v = verts.to(torch.float64)
        a, b, c = v[faces[:, 0]], v[faces[:, 1]], v[faces[:, 2]]
        g = (a + b + c) / 3.0
        self.centroid = g
        self.rel = (a - g, b - g, c - g)
        n = torch.linalg.cross(b - a, c - a, dim=1)
        nn = torch.linalg.vector_norm(n, dim=1)
        # A cross product below the rounding noise of its own evaluation is a degenerate
        # (collinear / repeated-vertex) triangle: zero area and exactly zero gradient.
        scale = torch.linalg.vector_norm(b - a, dim=1) * torch.linalg.vector_norm(c - a, dim=1)
        self.degenerate = nn <= 16.0 * torch.finfo(torch.float64).eps * scale
        self.area = torch.where(self.degenerate, torch.zeros_like(nn), 0.5 * nn)
        unit = n / torch.where(self.degenerate, torch.ones_like(nn), nn)[:, None]
        unit = torch.where(self.degenerate[:, None], torch.zeros_like(unit), unit)
        # grad_a A = 1/2 n_hat x (c - b), cyclic: half the opposite edge turned in-plane
        self.grad_area = (
            0.5 * torch.linalg.cross(unit, c - b, dim=1),
            0.5 * torch.linalg.cross(unit, a - c, dim=1),
            0.5 * torch.linalg.cross(unit, b - a, dim=1),
        )

        # (3, F) layouts: a tile's phases are (Kt, 3) @ (3, Ft) products
        self.centroid_t = g.T.contiguous()
        self.rel_t = tuple(r.T.contiguous() for r in self.rel)

    def tile(self, f0: int, f1: int):
        return self.centroid_t[:, f0:f1], tuple(r[:, f0:f1] for r in self.rel_t)


# ---------------------------------------------------------------------------------------------
# local divided differences on one tile
# ---------------------------------------------------------------------------------------------
def _nodes(k2, cen, rel):
    """theta = 2 pi k.g and the centred nodes xj = 2 pi k.(vj - g), each (Kt, Ft).

    k2: (Kt, 3) 2 pi k; cen: (3, Ft) centroids; rel: three (3, Ft) corner offsets."""
    return k2 @ cen, tuple(k2 @ r for r in rel)


def _sorted_nodes(x0, x1, x2):
    """(xp, xm, xq) = (max, median, min): (p, q) is the most distant pair, so the recursion
    divides by the spread xp - xq itself. Min/max only (no branches, exact)."""
    lo01 = torch.minimum(x0, x1)
    hi01 = torch.maximum(x0, x1)
    xp = torch.maximum(hi01, x2)
    xq = torch.minimum(lo01, x2)
    xm = torch.maximum(lo01, torch.minimum(hi01, x2))
    return xp, xm, xq


def _sinc(y):
    # torch.sinc is not vectorised on CPU; sin(y) / y is exact to rounding, 0/0 -> 1
    return torch.nan_to_num_(torch.sin(y).div_(y), nan=1.0)


def _dsinc(y, s):
    """d/dy sin(y)/y given s = sinc(y); series near 0 where (cos y - s) / y cancels."""
    d = (torch.cos(y) - s).div_(y)
    idx = (y.abs() < _DSINC_SERIES_Y).view(-1).nonzero().squeeze(1)
    if idx.numel():
        t = y.reshape(-1)[idx]
        t2 = t * t
        # -y/3 + y^3/30 - y^5/840 + y^7/45360 - y^9/3991680: exact to rounding for |y| < 0.1
        poly = t * (-1.0 / 3.0 + t2 * (1.0 / 30.0 + t2 * (-1.0 / 840.0 + t2 * (1.0 / 45360.0 - t2 / 3991680.0))))
        d.view(-1).index_copy_(0, idx, poly)
    return d


def _series_value(x0, x1, x2, n3):
    """f[x0, x1, x2] (centred nodes) by its Taylor series (n3 terms); returns (re, im), h_n."""
    e2 = x0 * x1 + x1 * x2 + x2 * x0
    e3 = x0 * x1 * x2
    h = [torch.ones_like(x0), torch.zeros_like(x0), -e2]
    for n in range(3, n3 + 1):
        h.append(e3 * h[n - 3] - e2 * h[n - 2])
    re = torch.zeros_like(x0)
    im = torch.zeros_like(x0)
    for n in range(n3):
        # (-i)^n: 1, -i, -1, i
        term = h[n] * _INV_FACT[n + 2]
        if n % 4 == 0:
            re = re + term
        elif n % 4 == 1:
            im = im - term
        elif n % 4 == 2:
            re = re - term
        else:
            im = im + term
    return re, im, h


def _series_repeated(xr, h):
    """f[xj, xj, xk, xl] by its series, from h_n = h_n(xj, xk, xl).

    H_n = h_n(xj, xj, xk, xl) = xj H_{n-1} + h_n; value -i sum (-i)^n H_n / (n+3)!.
    """
    H = torch.ones_like(xr)
    re = torch.zeros_like(xr)
    im = torch.zeros_like(xr)
    for n in range(len(h) - 1):
        if n > 0:
            H = xr * H + h[n]
        term = H * _INV_FACT[n + 3]
        # -i (-i)^n: -i, -1, i, 1
        k = n % 4
        if k == 0:
            im = im - term
        elif k == 1:
            re = re - term
        elif k == 2:
            im = im + term
        else:
            re = re + term
    return re, im


def _small_spread(den):
    """Flat indices of the pairs evaluated by series and their number of terms; clamps den
    in place so it can divide."""
    idx = (den < SERIES_SPREAD).view(-1).nonzero().squeeze(1)
    n3 = _n_terms(float(den.view(-1)[idx].max())) if idx.numel() else 0
    den.clamp_min_(SERIES_SPREAD)  # exact where the recursion is used
    return idx, n3


def _tile_forward(k2, cen, rel):
    """exp(-i theta) f[x0, x1, x2] on a tile: (re, im), each (Kt, Ft)."""
    theta, (x0, x1, x2) = _nodes(k2, cen, rel)
    xp, xm, xq = _sorted_nodes(x0, x1, x2)
    den = xp - xq
    idx, n3 = _small_spread(den)
    # i exp(-i theta) f[p, m]: exp(-i (xp + xm)/2) = exp(i xq / 2) as the nodes sum to zero
    ang_pm = torch.add(theta, xq, alpha=-0.5)
    ang_mq = torch.add(theta, xp, alpha=-0.5)
    s_pm = _sinc((xp - xm).mul_(0.5))
    s_mq = _sinc((xm - xq).mul_(0.5))
    # i exp(-i a) = sin a + i cos a
    re = (torch.sin(ang_pm).mul_(s_pm) - torch.sin(ang_mq).mul_(s_mq)).div_(den)
    im = (torch.cos(ang_pm).mul_(s_pm) - torch.cos(ang_mq).mul_(s_mq)).div_(den)
    if idx.numel():
        xs = [x.reshape(-1)[idx] for x in (x0, x1, x2)]
        sr, si, _ = _series_value(*xs, n3)
        th = theta.reshape(-1)[idx]
        c, s = torch.cos(th), torch.sin(th)
        re.view(-1).index_copy_(0, idx, c * sr + s * si)
        im.view(-1).index_copy_(0, idx, c * si - s * sr)
    return re, im


def _tile_backward(k2, cen, rel):
    """exp(-i theta) times f[x0, x1, x2] and f[xj, xj, xk, xl] (j = 0, 1, 2) on a tile."""
    theta, (x0, x1, x2) = _nodes(k2, cen, rel)
    xp, xm, xq = _sorted_nodes(x0, x1, x2)
    den = xp - xq
    idx, n3 = _small_spread(den)
    inv = den.reciprocal_()
    ang_pm = torch.add(theta, xq, alpha=-0.5)
    ang_mq = torch.add(theta, xp, alpha=-0.5)
    y_pm = (xp - xm).mul_(0.5)
    y_mq = (xm - xq).mul_(0.5)
    s_pm = _sinc(y_pm)
    s_mq = _sinc(y_mq)
    ds_pm = _dsinc(y_pm, s_pm)
    ds_mq = _dsinc(y_mq, s_mq)
    c_pm, n_pm = torch.cos(ang_pm), torch.sin(ang_pm)
    c_mq, n_mq = torch.cos(ang_mq), torch.sin(ang_mq)
    # F = i (A_pm S_pm - A_mq S_mq) / den with A = exp(-i ang) = c - i n
    f_re = (n_pm * s_pm - n_mq * s_mq).mul_(inv)
    f_im = (c_pm * s_pm - c_mq * s_mq).mul_(inv)
    # f[u, u, v] = d/du f[u, v] = A (S + i S') / 2 and f[v, v, u] = A (S - i S') / 2, with
    # (c - i n)(S +- i S') = (c S +- n S') + i (+-c S' - n S)
    a_re, a_im = c_pm * s_pm, n_pm * ds_pm
    b_re, b_im = c_pm * ds_pm, n_pm * s_pm
    pm = (0.5 * (a_re + a_im), 0.5 * (b_re - b_im))  # f[p, p, m]
    mp = (0.5 * (a_re - a_im), -0.5 * (b_re + b_im))  # f[m, m, p]
    a_re, a_im = c_mq * s_mq, n_mq * ds_mq
    b_re, b_im = c_mq * ds_mq, n_mq * s_mq
    mq = (0.5 * (a_re + a_im), 0.5 * (b_re - b_im))  # f[m, m, q]
    qm = (0.5 * (a_re - a_im), -0.5 * (b_re + b_im))  # f[q, q, m]
    # f[p,p,m,q] = (f[p,p,m] - F) / (xp - xq), f[q,q,m,p] = (F - f[q,q,m]) / (xp - xq),
    # f[m,m,p,q] = (f[m,m,p] - f[m,m,q]) / (xp - xq)
    dp = ((pm[0] - f_re).mul_(inv), (pm[1] - f_im).mul_(inv))
    dq = ((f_re - qm[0]).mul_(inv), (f_im - qm[1]).mul_(inv))
    dm = ((mp[0] - mq[0]).mul_(inv), (mp[1] - mq[1]).mul_(inv))
    # a corner's derivative depends only on its node's value: pick by value (ties are harmless,
    # the tied roles then denote the same divided difference)
    # (blend with 0/1 masks: torch.where is not vectorised on CPU and costs 3x more)
    dpm = (dp[0] - dm[0], dp[1] - dm[1])
    dqm = (dq[0] - dm[0], dq[1] - dm[1])
    corners = []
    for xj in (x0, x1, x2):
        is_p = (xj == xp).to(xj.dtype)
        is_q = (xj == xq).to(xj.dtype)
        is_q.mul_(1.0 - is_p)  # all three nodes equal: count the corner once
        corners.append(tuple(torch.addcmul(torch.addcmul(dm[i], is_p, dpm[i]), is_q, dqm[i]) for i in range(2)))
    if idx.numel():
        xs = [x.reshape(-1)[idx] for x in (x0, x1, x2)]
        sr, si, h = _series_value(*xs, n3)
        th = theta.reshape(-1)[idx]
        c, s = torch.cos(th), torch.sin(th)

        def put(dst, vr, vi):
            # exp(-i theta) (vr + i vi)
            dst[0].view(-1).index_copy_(0, idx, c * vr + s * vi)
            dst[1].view(-1).index_copy_(0, idx, c * vi - s * vr)

        put((f_re, f_im), sr, si)
        for dst, xr in zip(corners, xs):
            put(dst, *_series_repeated(xr, h))
    return (f_re, f_im), tuple(corners)


# ---------------------------------------------------------------------------------------------
# tiling
# ---------------------------------------------------------------------------------------------
def _tiles(n_freq: int, n_face: int, bytes_per_pair: int, max_bytes: int):
    pairs = max(1, min(_MAX_PAIRS_PER_TILE, max_bytes // bytes_per_pair))
    ft = min(n_face, pairs)
    kt = max(1, min(n_freq, pairs // ft))
    for k0 in range(0, n_freq, kt):
        for f0 in range(0, n_face, ft):
            yield k0, min(n_freq, k0 + kt), f0, min(n_face, f0 + ft)


def forward(verts, faces, weights, freqs, *, max_bytes: int = DEFAULT_MAX_BYTES):
    """U(k) = sum_t w_t 2 A_t f[pa, pb, pc]; (K,) complex of the precision of ``verts``."""
    geo = _FaceGeometry(verts, faces)
    wa2 = 2.0 * weights.to(torch.float64) * geo.area
    k2 = TWO_PI * freqs.to(torch.float64)
    n_freq, n_face = k2.shape[0], faces.shape[0]
    out_re = torch.zeros(n_freq, dtype=torch.float64, device=verts.device)
    out_im = torch.zeros_like(out_re)
    for k0, k1, f0, f1 in _tiles(n_freq, n_face, _BYTES_PER_PAIR_FORWARD, max_bytes):
        cen, rel = geo.tile(f0, f1)
        re, im = _tile_forward(k2[k0:k1], cen, rel)
        w = wa2[f0:f1]
        out_re[k0:k1] += re @ w
        out_im[k0:k1] += im @ w
    return torch.complex(out_re, out_im).to(verts.dtype.to_complex())


def backward(verts, faces, weights, freqs, grad_out, *, max_bytes: int = DEFAULT_MAX_BYTES):
    """grad_theta = Re(sum_k conj(G_k) dU_k/dtheta) for theta = verts (V, 3) and weights (F,)."""
    geo = _FaceGeometry(verts, faces)
    w64 = weights.to(torch.float64)
    k2 = TWO_PI * freqs.to(torch.float64)
    g = grad_out.to(torch.complex128)
    g_re, g_im = g.real.contiguous(), g.imag.contiguous()
    n_freq, n_face = k2.shape[0], faces.shape[0]
    dev = verts.device
    # Re(conj(G) Z) = G_re Z_re + G_im Z_im, reduced over frequencies in float64 per face
    re_f = torch.zeros(n_face, dtype=torch.float64, device=dev)
    corner = [torch.zeros(n_face, 3, dtype=torch.float64, device=dev) for _ in range(3)]
    for k0, k1, f0, f1 in _tiles(n_freq, n_face, _BYTES_PER_PAIR_BACKWARD, max_bytes):
        cen, rel = geo.tile(f0, f1)
        (f_re, f_im), ds = _tile_backward(k2[k0:k1], cen, rel)
        gr, gi = g_re[k0:k1], g_im[k0:k1]
        re_f[f0:f1] += gr @ f_re + gi @ f_im
        kk = k2[k0:k1]
        for j, (d_re, d_im) in enumerate(ds):
            corner[j][f0:f1] += (d_re * gr[:, None] + d_im * gi[:, None]).T @ kk
    grad_w = 2.0 * geo.area * re_f
    scale_phase = (2.0 * w64 * geo.area)[:, None]
    scale_area = (2.0 * w64 * re_f)[:, None]
    grad_v = torch.zeros(verts.shape[0], 3, dtype=torch.float64, device=dev)
    for j in range(3):
        contrib = scale_phase * corner[j] + scale_area * geo.grad_area[j]
        grad_v.index_add_(0, faces[:, j], contrib)
    return grad_v.to(verts.dtype), grad_w.to(weights.dtype)


class TorchBackend:
    """Registry entry for the pure-torch implementation (any device, exact)."""

    name = "torch"
    needs_band = False
    exact = True

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES):
        self.max_bytes = int(max_bytes)

    def memory_estimate_bytes(self, n_faces: int, n_freqs: int, dtype=torch.float32) -> float:
        pairs = min(n_faces * n_freqs, _MAX_PAIRS_PER_TILE, self.max_bytes // _BYTES_PER_PAIR_BACKWARD)
        return float(pairs * _BYTES_PER_PAIR_BACKWARD)

    def supports(self, device) -> bool:
        return True

    def forward(self, verts, faces, weights, freqs):
        return forward(verts, faces, weights, freqs, max_bytes=self.max_bytes)

    def backward(self, verts, faces, weights, freqs, grad_out):
        return backward(verts, faces, weights, freqs, grad_out, max_bytes=self.max_bytes)
