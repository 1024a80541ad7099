"""Approximate mesh Fourier transform through non-uniform FFTs ("nufft" backend).

The exact backends cost (band frequencies) x (faces) per pass. Here each triangle's uniform
surface density is replaced by a quadrature rule (a point cloud with area weights), and a type-1
non-uniform FFT (finufft) spreads all points onto the integer modes of the band's bounding box
in one go; the band entries are then gathered. Cost ~ (points) x (spreading kernel) + one small
FFT, independent of the band size.

Accuracy is controlled by one knob, ``tol`` (target error relative to |U(0)|, i.e. to the total
weighted area):
- quadrature: per triangle, the rule order n is the smallest whose measured error at the
  triangle's largest phase span theta = 2 pi max_edge sum_a |k_a|max |e_a| is below tol
  (conical Gauss-Jacobi x Gauss-Legendre product rules, n^2 points, exact for degree 2n - 1;
  measured: theta up to ~3.3 n - c(tol) is resolved, so refining the rule beats subdividing
  triangles, which only kicks in past n = 30);
- the NUFFT tolerance is tol / 4.

Backward (analytic): with G the upstream gradient on the band, the vertex gradient needs, at
every quadrature point x_j, S(x_j) = sum_k conj(G_k) exp(-2 pi i k.x_j) and
H(x_j) = sum_k conj(G_k) (-2 pi i k) exp(-2 pi i k.x_j): four type-2 NUFFTs in one
vectorised call. They are chained through the barycentric weights and triangle areas by
autograd on the cheap point-generation map.

Frequencies must be a :class:`deltamic_core.grid.GridBand` (modes on the grid of a periodic
box of size L: k = m / L, so exp(-2 pi i k.x) = exp(-i m (2 pi x / L))).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

try:  # optional dependency at import time; availability is reported by the registry
    import finufft  # type: ignore
except ImportError:  # pragma: no cover - exercised only where finufft is missing
    finufft = None

# Largest phase span theta (radians) that the conical rule of order n = index + 1 integrates with
# an error below tol (relative to the triangle's area), for tol = 10^-2 ... 10^-12.
# Measured (deltamic, by this project's calibration script tests/test_nufft.py::
# test_rule_table_is_conservative re-checks it) as the worst case over random, equilateral and
# sliver triangles and directions, against a 70x70 rule; 60.0 means "at least 60".
_TOLS = np.array([1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-10, 1e-12])
_THETA_MAX = np.array(
    [
        [0.5, 3.0, 6.0, 9.0, 12.5, 16.0, 20.0, 23.5, 27.5, 31.0, 35.0, 38.5, 42.5, 46.5, 50.0, 54.0, 58.0] + [60.0] * 13,
        [0.0, 1.5, 4.0, 6.5, 9.5, 13.0, 16.0, 19.5, 23.0, 26.5, 30.0, 34.0, 37.5, 41.0, 45.0, 48.5, 52.0, 56.0, 59.5] + [60.0] * 11,
        [0.0, 0.5, 2.5, 5.0, 7.5, 10.5, 13.5, 16.5, 20.0, 23.0, 26.5, 30.0, 33.5, 37.0, 40.5, 44.0, 47.5, 51.0, 54.5, 58.5] + [60.0] * 10,
        [0.0, 0.5, 1.5, 3.5, 6.0, 8.5, 11.0, 14.0, 17.0, 20.0, 23.5, 26.5, 30.0, 33.5, 36.5, 40.0, 43.5, 47.0, 50.5, 54.0, 57.5] + [60.0] * 9,
        [0.0, 0.0, 1.0, 2.5, 4.5, 7.0, 9.5, 12.0, 15.0, 17.5, 20.5, 24.0, 27.0, 30.0, 33.5, 36.5, 40.0, 43.5, 47.0, 50.0, 53.5, 57.0] + [60.0] * 8,
        [0.0, 0.0, 0.5, 2.0, 3.5, 5.5, 8.0, 10.5, 13.0, 15.5, 18.5, 21.5, 24.5, 27.5, 30.5, 33.5, 37.0, 40.0, 43.5, 47.0, 50.0, 53.5, 57.0] + [60.0] * 7,
        [0.0, 0.0, 0.5, 1.5, 3.0, 4.5, 6.5, 9.0, 11.0, 14.0, 16.5, 19.0, 22.0, 25.0, 28.0, 31.0, 34.0, 37.5, 40.5, 43.5, 47.0, 50.0, 53.5, 57.0] + [60.0] * 6,
        [0.0, 0.0, 0.0, 0.5, 1.5, 3.0, 4.5, 6.5, 8.5, 11.0, 13.0, 15.5, 18.0, 21.0, 23.5, 26.5, 29.5, 32.0, 35.0, 38.0, 41.5, 44.5, 47.5, 50.5, 54.0, 57.0] + [60.0] * 4,
        [0.0, 0.0, 0.0, 0.5, 1.0, 2.0, 3.5, 5.0, 6.5, 8.5, 10.5, 13.0, 15.0, 17.5, 20.0, 22.5, 25.5, 28.0, 31.0, 33.5, 36.5, 39.5, 42.5, 45.5, 48.5, 51.5, 54.5, 57.5] + [60.0] * 2,
    ]
)
MAX_ORDER = _THETA_MAX.shape[1]


@lru_cache(maxsize=None)
def triangle_rule(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Conical product rule of order n on a triangle.

    Returns barycentric coordinates (n*n, 3) and weights (n*n,) summing to 1 (fractions of
    the triangle's area). Exact for polynomials of degree <= 2n - 1.
    """
    from scipy.special import roots_jacobi, roots_legendre

    if n < 1:
        raise ValueError(f"rule order must be >= 1, got {n}")
    xs, ws = roots_jacobi(n, 1.0, 0.0)  # weight (1 - x): the Duffy Jacobian
    s = (xs + 1.0) / 2.0
    yt, wt = roots_legendre(n)
    t = (yt + 1.0) / 2.0
    S, T = np.meshgrid(s, t, indexing="ij")
    w = np.outer(ws, wt).ravel()
    u = S.ravel()
    v = ((1.0 - S) * T).ravel()
    lam = np.stack([1.0 - u - v, u, v], axis=1)
    return lam, w / w.sum()


def rule_order(theta: np.ndarray, tol: float) -> np.ndarray:
    """Smallest rule order resolving phase spans ``theta`` to ``tol`` (MAX_ORDER + 1 where even
    the largest rule does not: those triangles get subdivided)."""
    row = int(np.searchsorted(-_TOLS, -tol, side="left"))  # first table tol <= requested tol
    row = min(row, len(_TOLS) - 1)
    table = _THETA_MAX[row]
    # ``table`` is non-decreasing in n: position of the first entry >= theta, +1 for the order
    return np.searchsorted(table, theta, side="left") + 1


@lru_cache(maxsize=None)
def _subdivided_rule(n: int, s: int) -> tuple[np.ndarray, np.ndarray]:
    """Order-n rule applied on each of the s*s sub-triangles of a uniform barycentric split."""
    lam, w = triangle_rule(n)
    subs = []
    for i in range(s):
        for j in range(s - i):
            a = np.array([i, j, s - i - j], float)
            subs.append(np.stack([a, a + [1, 0, -1], a + [0, 1, -1]]) / s)  # upright
            if i + j < s - 1:
                subs.append(np.stack([a + [1, 0, -1], a + [1, 1, -2], a + [0, 1, -1]]) / s)  # inverted
    corners = np.stack(subs)  # (s*s, 3 corners, 3 barycentric)
    lam_all = np.einsum("qc,tcb->tqb", lam, corners).reshape(-1, 3)
    w_all = np.tile(w, len(subs)) / len(subs)
    return lam_all, w_all


class NufftBackend:
    """mesh_ft backend on finufft (CPU). See the module docstring."""

    name = "nufft"
    needs_band = True
    exact = False

    def __init__(self, tol: float = 1e-6, nthreads: int | None = None):
        if not (0 < tol < 1):
            raise ValueError(f"tol must be in (0, 1), got {tol}")
        self.tol = float(tol)
        self.nthreads = nthreads
        self._cache: dict = {}
        self.last_n_points = 0

    @staticmethod
    def available() -> bool:
        return finufft is not None

    def supports(self, device) -> bool:
        return finufft is not None and torch.device(device).type == "cpu"

    # ------------------------------------------------------------------ geometry
    def _points(self, verts, faces, weights, band):
        """Quadrature points (P, 3) and real strengths (P,), differentiable w.r.t. verts/weights."""
        tri = verts[faces]  # (F, 3, 3)
        e = torch.stack([tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 1], tri[:, 0] - tri[:, 2]], 1)
        cross = torch.linalg.cross(e[:, 0], -e[:, 2])
        area2 = (cross * cross).sum(-1)
        # zero-area triangles: area 0 and a zero (not NaN) gradient
        safe = torch.where(area2 > 0, area2, torch.ones_like(area2))
        area = torch.where(area2 > 0, 0.5 * torch.sqrt(safe), torch.zeros_like(area2))
        strength = weights * area

        kmax = self._band_info(band)["kmax"]  # (3,) cycles/um per axis
        span = (e.detach().abs().to(torch.float64).cpu().numpy() @ kmax).max(1) * 2 * np.pi
        order = rule_order(span, self.tol)
        sub = np.ones_like(order)
        too_big = order > MAX_ORDER
        if too_big.any():
            # split until the top rule resolves the pieces (phase span scales with 1/s)
            top = _THETA_MAX[min(int(np.searchsorted(-_TOLS, -self.tol)), len(_TOLS) - 1)][-1]
            sub[too_big] = np.ceil(span[too_big] / top).astype(int)
            order[too_big] = MAX_ORDER
        xs, ss = [], []
        keys = order * 1000 + sub
        for key in np.unique(keys):
            idx = torch.from_numpy(np.nonzero(keys == key)[0]).to(verts.device)
            lam, w = _subdivided_rule(int(key // 1000), int(key % 1000))
            lam_t = torch.as_tensor(lam, dtype=verts.dtype, device=verts.device)
            w_t = torch.as_tensor(w, dtype=verts.dtype, device=verts.device)
            xs.append(torch.einsum("qc,fcd->fqd", lam_t, tri[idx]).reshape(-1, 3))
            ss.append((strength[idx, None] * w_t[None, :]).reshape(-1))
        return torch.cat(xs), torch.cat(ss)

    def _band_info(self, band):
        """Per-band constants (mode window, gather positions, frequencies), cached: a render
        plan reuses one band for many iterations."""
        key = (id(band), len(band))
        info = self._cache.get(key)
        if info is None or info["band"] is not band:
            m = band.signed_modes().numpy()
            lo = m.min(0)
            n_modes = tuple(int(x) for x in (m.max(0) - lo + 1))
            k = band.freqs(torch.float64).numpy()
            info = {
                "band": band,
                "pos": tuple(np.ascontiguousarray(c) for c in (m - lo).T),
                "n_modes": n_modes,
                # finufft (modeord=0) index i <-> mode i - N//2: shift the window onto our modes
                "shift": lo + np.array(n_modes) // 2,
                "k": k,
                "kmax": np.abs(k).max(0),
                "box": np.asarray(band.grid.extent_um, dtype=np.float64),
            }
            self._cache = {key: info}  # keep only the current band
        return info

    def _angles(self, x, info, real_dtype):
        """Points as angles 2 pi x / L wrapped to [-pi, pi), one array per axis, and the phase
        exp(-i shift.angle) that moves finufft's centred mode window onto the band's modes."""
        f = x.detach().to(torch.float64).cpu().numpy() / info["box"]
        f -= np.floor(f + 0.5)
        f *= 2 * np.pi
        phase = np.exp(-1j * (f @ info["shift"].astype(np.float64)))
        return [np.ascontiguousarray(f[:, a], dtype=real_dtype) for a in range(3)], phase

    def _plan(self, kind, n_modes, n_trans, dtype):
        complex_dtype = "complex128" if dtype == torch.float64 else "complex64"
        eps = max(self.tol / 4, 1e-14 if dtype == torch.float64 else 1e-6)
        nthreads = self.nthreads or torch.get_num_threads()
        return finufft.Plan(kind, n_modes, n_trans=n_trans, eps=eps, isign=-1, dtype=complex_dtype,
                            modeord=0, nthreads=nthreads)

    # ------------------------------------------------------------------ passes
    def forward(self, verts, faces, weights, band):
        info = self._band_info(band)
        with torch.no_grad():
            x, s = self._points(verts, faces, weights, band)
        self.last_n_points = int(x.shape[0])
        real_np, complex_np = _np_dtypes(verts.dtype)
        ang, phase = self._angles(x, info, real_np)
        c = (s.detach().cpu().numpy().astype(np.float64) * phase).astype(complex_np)
        plan = self._plan(1, info["n_modes"], 1, verts.dtype)
        plan.setpts(*ang)
        out = plan.execute(c)[info["pos"]]
        return torch.from_numpy(out).to(verts.device)

    def backward(self, verts, faces, weights, band, grad_out):
        info = self._band_info(band)
        real_np, complex_np = _np_dtypes(verts.dtype)
        with torch.enable_grad():
            v = verts.detach().requires_grad_(True)
            w = weights.detach().requires_grad_(True)
            x, s = self._points(v, faces, w, band)
            ang, phase = self._angles(x, info, real_np)
            g = np.conj(grad_out.detach().cpu().numpy())
            f = np.zeros((4,) + info["n_modes"], dtype=complex_np)
            pos = info["pos"]
            f[0][pos] = g
            for a in range(3):
                f[a + 1][pos] = g * (-2j * np.pi * info["k"][:, a])
            plan = self._plan(2, info["n_modes"], 4, verts.dtype)
            plan.setpts(*ang)
            vals = plan.execute(f) * phase[None, :]  # (4, P): S and H_z, H_y, H_x at the points
            sv = s.detach().cpu().numpy()
            grad_x = torch.from_numpy(np.ascontiguousarray(vals[1:].real.T) * sv[:, None]).to(x)
            grad_s = torch.from_numpy(np.ascontiguousarray(vals[0].real)).to(s)
            gv, gw = torch.autograd.grad((x, s), (v, w), (grad_x, grad_s), allow_unused=True)
        if gv is None:
            gv = torch.zeros_like(verts)
        if gw is None:
            gw = torch.zeros_like(weights)
        return gv, gw


def _np_dtypes(dtype):
    return (np.float64, np.complex128) if dtype == torch.float64 else (np.float32, np.complex64)
