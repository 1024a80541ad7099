"""Independent references for the mesh Fourier transform (test-only).

* :func:`triangle_ft_mp` / :func:`mesh_ft_mp`: the closed-form divided difference
  f[x0, x1, x2] = sum_j f(xj) / prod_{l != j} (xj - xl), f(z) = -exp(-i z), evaluated in
  mpmath with a working precision raised by the cancellation it will suffer (the closed form
  loses about log2(1 / gap^2) bits when two phases nearly coincide), and its confluent forms for
  exactly repeated phases. Inputs are taken as exact binary floats. This shares nothing with the
  library's series / extreme-pair recursion.
* :func:`triangle_ft_quad`: direct 2D quadrature of exp(-2 pi i k.x) over the triangle
  (mpmath Gauss-Legendre), to validate the closed form itself.
* :func:`fd_grad`: float64 central finite differences of any real-or-complex function, with
  the library's gradient convention grad = Re(sum_k conj(G_k) dU_k / dtheta).
"""

from __future__ import annotations

import math

import mpmath as mp
import numpy as np
import torch

_BASE_PREC = 200  # bits; a float times a float is exact in 106, a 3-term dot product in < 200


def _f(z):
    return -mp.exp(-1j * z)


def _df(z):
    return 1j * mp.exp(-1j * z)


def _divdiff2(x0, x1, x2):
    """Second divided difference of f(z) = -exp(-iz), nodes exact mpf (confluence allowed)."""
    xs = [x0, x1, x2]
    gaps = [abs(x0 - x1), abs(x1 - x2), abs(x2 - x0)]
    nonzero = [g for g in gaps if g != 0]
    if not nonzero:
        return mp.exp(-1j * x0) / 2  # f''(x)/2
    if len(nonzero) == 3:
        return sum(_f(xs[j]) / ((xs[j] - xs[(j + 1) % 3]) * (xs[j] - xs[(j + 2) % 3])) for j in range(3))
    # exactly one pair coincides: f[u, u, w] = (f[u, w] - f'(u)) / (w - u)
    if gaps[0] == 0:
        u, w = x0, x2
    elif gaps[1] == 0:
        u, w = x1, x0
    else:
        u, w = x2, x1
    fuw = (_f(u) - _f(w)) / (u - w)
    return (fuw - _df(u)) / (w - u)


def triangle_ft_mp(a, b, c, k, dps: int = 40):
    """integral over triangle (a, b, c) of exp(-2 pi i k.x) dS, as an mpc (about ``dps`` digits).

    a, b, c, k: 3 floats each (um, cycles/um); converted exactly.
    """
    a, b, c, k = ([mp.mpf(float(t)) for t in p] for p in (a, b, c, k))
    with mp.workprec(_BASE_PREC):
        # exact phases / (2 pi): products of floats and their sums fit in 200 bits
        q = [mp.fsum(ki * vi for ki, vi in zip(k, v)) for v in (a, b, c)]
        gaps = [abs(q[0] - q[1]), abs(q[1] - q[2]), abs(q[2] - q[0])]
    small = min([g for g in gaps if g != 0] or [mp.mpf(1)])
    extra = 0 if small >= 1 else int(2 * (-mp.log(small, 2))) + 8
    prec = int(dps * 3.33) + 64 + extra
    with mp.workprec(max(prec, _BASE_PREC)):
        e1 = [b[i] - a[i] for i in range(3)]
        e2 = [c[i] - a[i] for i in range(3)]
        n = [e1[1] * e2[2] - e1[2] * e2[1], e1[2] * e2[0] - e1[0] * e2[2], e1[0] * e2[1] - e1[1] * e2[0]]
        area = mp.sqrt(mp.fsum(t * t for t in n)) / 2
        x = [2 * mp.pi * qi for qi in q]
        val = 2 * area * _divdiff2(*x)
    return val


def mesh_ft_mp(verts, faces, freqs, weights=None, dps: int = 40) -> np.ndarray:
    """(K,) complex128 of sum_t w_t triangle_ft_mp(...), summed in mpmath then rounded."""
    v = np.asarray(verts, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    k = np.asarray(freqs, dtype=np.float64)
    w = np.ones(len(f)) if weights is None else np.asarray(weights, dtype=np.float64)
    out = np.empty(len(k), dtype=np.complex128)
    for i, kk in enumerate(k):
        total = mp.mpc(0)
        for t, (ia, ib, ic) in enumerate(f):
            if w[t] == 0:
                continue
            total += mp.mpf(float(w[t])) * triangle_ft_mp(v[ia], v[ib], v[ic], kk, dps)
        out[i] = complex(total)
    return out


def triangle_area_mp(a, b, c) -> float:
    return float(abs(triangle_ft_mp(a, b, c, (0.0, 0.0, 0.0))))


def triangle_ft_quad(a, b, c, k, degree: int = 40, dps: int = 30):
    """Direct 2D quadrature: x = a + s (b - a) + t (c - a), dS = 2A ds dt, over s, t >= 0,
    s + t <= 1 (Duffy-free: integrate t over [0, 1 - s] with Gauss-Legendre in mpmath)."""
    with mp.workdps(dps):
        a, b, c, k = ([mp.mpf(float(t)) for t in p] for p in (a, b, c, k))
        e1 = [b[i] - a[i] for i in range(3)]
        e2 = [c[i] - a[i] for i in range(3)]
        n = [e1[1] * e2[2] - e1[2] * e2[1], e1[2] * e2[0] - e1[0] * e2[2], e1[0] * e2[1] - e1[1] * e2[0]]
        two_area = mp.sqrt(mp.fsum(t * t for t in n))
        pa = 2 * mp.pi * mp.fsum(ki * ai for ki, ai in zip(k, a))
        d1 = 2 * mp.pi * mp.fsum(ki * ei for ki, ei in zip(k, e1))
        d2 = 2 * mp.pi * mp.fsum(ki * ei for ki, ei in zip(k, e2))

        def inner(s):
            return mp.quad(
                lambda t: mp.exp(-1j * (pa + s * d1 + t * d2)), [0, 1 - s], method="gauss-legendre", maxdegree=degree
            )

        return two_area * mp.quad(inner, [0, 1], method="gauss-legendre", maxdegree=degree)


def fd_grad(fn, x: torch.Tensor, grad_out: torch.Tensor | None = None, h: float = 1e-6) -> torch.Tensor:
    """Central differences of ``fn(x)`` in float64: Re(sum conj(G) dU/dx) for every entry of x.

    ``fn`` maps a float64 tensor shaped like ``x`` to a real or complex tensor; ``grad_out``
    G defaults to ones (of fn's output shape).
    """
    x = x.detach().to(torch.float64).clone()
    with torch.no_grad():
        base = fn(x)
        G = torch.ones_like(base) if grad_out is None else grad_out.to(base.dtype)
        out = torch.empty_like(x)
        flat = x.view(-1)
        for i in range(flat.numel()):
            old = float(flat[i])
            flat[i] = old + h
            up = fn(x)
            flat[i] = old - h
            dn = fn(x)
            flat[i] = old
            d = (up - dn) / (2 * h)
            out.view(-1)[i] = float(torch.real(torch.sum(torch.conj(G) * d)))
    return out


def sphere_ft(k_norm, radius: float) -> np.ndarray:
    """Transform of the uniform unit density on a sphere of radius R: 4 pi R^2 sin(x) / x."""
    x = 2 * math.pi * np.asarray(k_norm, dtype=np.float64) * radius
    return 4 * math.pi * radius**2 * np.sinc(x / math.pi)
