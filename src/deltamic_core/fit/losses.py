"""Data terms of the fit and the closed-form photometric (gain, background) solve.

The model image is ``gain * render + background`` where ``render`` is the blurred membrane
density of the mesh. Gain and background are nuisance parameters: for a fixed render the
weighted least-squares optimum is available in closed form, so they are eliminated every step
(variable projection) instead of being learnt by gradient descent or, worse, guessed by min-max
normalisation (which couples the fit to the two most extreme voxels of the image).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "robust_normalise",
    "intensity_weight",
    "weighted_mse",
    "poisson_nll",
    "ObservedStats",
    "solve_photometric",
    "FieldStats",
    "solve_photometric_field",
    "solve_two_levels",
]


def _quantiles(x: torch.Tensor, qs: tuple[float, float], max_samples: int = 2_000_000) -> tuple[float, float]:
    """Percentiles of a large tensor; ``torch.quantile`` refuses more than 2**24 elements, so
    very large images are subsampled on a fixed stride (deterministic)."""
    flat = x.detach().reshape(-1)
    if flat.numel() > max_samples:
        stride = -(-flat.numel() // max_samples)
        flat = flat[::stride]
    flat = flat.to(torch.float64)
    q = torch.tensor(qs, dtype=torch.float64)
    if flat.device.type != "cpu" or flat.numel() == 0 or not bool(torch.isfinite(flat).all()):
        q = torch.quantile(flat, q.to(flat.device))
        return float(q[0]), float(q[1])
    # torch.quantile's 'linear' rule (ranks q (n - 1), lerp between the neighbouring order
    # statistics) on order statistics found by a partial sort: the same values, without
    # sorting the whole image (0.1-0.2 s per level on a 2 M voxel stack)
    rank = q * (flat.numel() - 1)
    below = rank.long()
    above = rank.ceil().long()
    kth = np.unique(np.concatenate([below.numpy(), above.numpy()]))
    part = np.partition(flat.numpy(), kth)
    v_below = torch.as_tensor(part[below.numpy()])
    v_above = torch.as_tensor(part[above.numpy()])
    q = torch.lerp(v_below, v_above, rank - below.to(torch.float64))
    return float(q[0]), float(q[1])


def robust_normalise(observed: torch.Tensor, low_pct: float = 1.0, high_pct: float = 99.5) -> torch.Tensor:
    """Map an image to [0, 1] by its ``low_pct`` and ``high_pct`` percentiles (clipped).

    Parameters
    ----------
    observed : (Z, Y, X) tensor
    low_pct, high_pct : float
        Percentiles in [0, 100], ``low_pct < high_pct``.

    Returns
    -------
    (Z, Y, X) tensor of the same dtype, values in [0, 1]. A constant image maps to zeros.
    """
    if not 0.0 <= low_pct < high_pct <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= low_pct < high_pct <= 100, got ({low_pct}, {high_pct})")
    lo, hi = _quantiles(observed, (low_pct / 100.0, high_pct / 100.0))
    if not hi > lo:
        return torch.zeros_like(observed)
    return ((observed - lo) / (hi - lo)).clamp_(0.0, 1.0)


def intensity_weight(
    observed: torch.Tensor,
    alpha: float,
    *,
    floor: float = 0.0,
    low_pct: float = 1.0,
    high_pct: float = 99.5,
) -> torch.Tensor | None:
    """Per-voxel weights that emphasise the bright membranes.

    ``w = floor + (1 - floor) * n ** alpha`` with ``n`` the image normalised to [0, 1] by
    robust percentiles (:func:`robust_normalise`). ``alpha = 0`` gives plain MSE (returns None,
    meaning uniform weights). A positive ``floor`` keeps a penalty on rendering membrane where
    the image is dark (with ``floor = 0`` the dark voxels would not constrain the fit at all).

    Returns
    -------
    (Z, Y, X) tensor or None (uniform weights).
    """
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"floor must be in [0, 1], got {floor}")
    if alpha == 0:
        return None
    n = robust_normalise(observed, low_pct, high_pct)
    return floor + (1.0 - floor) * n.pow(alpha)


def weighted_mse(model: torch.Tensor, observed: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """``sum(w * (model - observed)**2) / sum(w)`` (plain mean squared error when ``weight`` is None).

    Parameters
    ----------
    model, observed : (Z, Y, X) tensors
    weight : (Z, Y, X) tensor of non-negative weights, or None

    Returns
    -------
    0-d tensor, differentiable w.r.t. ``model``.
    """
    if model.shape != observed.shape:
        raise ValueError(f"model shape {tuple(model.shape)} differs from observed shape {tuple(observed.shape)}")
    r2 = (model - observed).square()
    if weight is None:
        return r2.mean()
    return (weight * r2).sum() / weight.sum().clamp_min(torch.finfo(r2.dtype).tiny)


def poisson_nll(
    model: torch.Tensor,
    observed: torch.Tensor,
    weight: torch.Tensor | None = None,
    *,
    floor: float = 1e-3,
) -> torch.Tensor:
    """Poisson negative log-likelihood per voxel, up to the model-independent ``log(obs!)``:
    ``mean(m - obs * log(m))`` with ``m = max(model, floor)``.

    The expected count must stay positive; band-limited renders ring slightly below zero, so
    the model is floored (values below ``floor`` get no gradient, which pushes nothing the
    wrong way). ``observed`` is in counts (photo-electrons), non-negative.

    Returns
    -------
    0-d tensor (weighted mean when ``weight`` is given).
    """
    if model.shape != observed.shape:
        raise ValueError(f"model shape {tuple(model.shape)} differs from observed shape {tuple(observed.shape)}")
    if floor <= 0:
        raise ValueError(f"floor must be positive, got {floor}")
    m = model.clamp_min(floor)
    nll = m - observed * torch.log(m)
    if weight is None:
        return nll.mean()
    return (weight * nll).sum() / weight.sum().clamp_min(torch.finfo(nll.dtype).tiny)


class ObservedStats:
    """The parts of :func:`solve_photometric` that depend on the observed image and the weight
    only (float64, flat), computed once per fit level instead of every step: with the observed
    image's conversions, centring and sums these were half of the solve's passes over the image.
    """

    def __init__(self, observed: torch.Tensor, weight: torch.Tensor | None = None):
        with torch.no_grad():
            o = observed.detach().to(torch.float64).reshape(-1)
            if weight is None:
                self.w = None
                self.w_sum = float(o.numel())
                o_mean = o.mean()
                self.wdo = o - o_mean
                self.soo = float(torch.dot(self.wdo, self.wdo))
            else:
                self.w = weight.detach().to(torch.float64).reshape(-1)
                self.w_sum = float(self.w.sum())
                if not self.w_sum > 0:
                    raise ValueError("weight must have a positive sum")
                o_mean = torch.dot(self.w, o) / self.w_sum
                do = o - o_mean
                self.wdo = self.w * do
                self.soo = float(torch.dot(self.wdo, do))
            self.o_mean = float(o_mean)
        self.shape = tuple(observed.shape)


def solve_photometric(
    rendered: torch.Tensor,
    observed: torch.Tensor,
    weight: torch.Tensor | None = None,
    *,
    min_gain: float = 1e-8,
    stats: ObservedStats | None = None,
) -> tuple[float, float]:
    """Weighted least-squares gain and background for ``observed ~ gain * rendered + background``.

    Minimises ``sum(w * (g * r + b - o)**2)`` in closed form (accumulated in float64), with the
    gain constrained to ``g >= min_gain * scale`` (``scale = std(o) / std(r)``): a membrane
    cannot emit negative light. When the constraint is active the background is re-solved for
    the clamped gain, which is the constrained optimum (the problem is a convex quadratic in b).

    Parameters
    ----------
    rendered, observed : (Z, Y, X) tensors (gradients are not propagated: at the optimum the
        loss is stationary in (g, b), so the vertex gradient needs no term through them).
    weight : (Z, Y, X) non-negative tensor or None (uniform)
    min_gain : float
        Relative lower bound of the gain.
    stats : ObservedStats, optional
        ``ObservedStats(observed, weight)`` computed before (a fit reuses it every step).

    Returns
    -------
    (gain, background) : floats
    """
    if rendered.shape != observed.shape:
        raise ValueError(f"rendered shape {tuple(rendered.shape)} differs from observed shape {tuple(observed.shape)}")
    if stats is None:
        stats = ObservedStats(observed, weight)
    # centred sums as dot products (no squared temporaries: ~2x faster than elementwise
    # products and sums on a 2 M voxel image, where this solve had cost ~6 rfftn per step)
    with torch.no_grad():
        r = rendered.detach().to(torch.float64, copy=True).reshape(-1)
        r_mean = r.mean() if stats.w is None else torch.dot(stats.w, r) / stats.w_sum
        dr = r.sub_(r_mean)  # in place: one image-sized temporary fewer
        wdr = dr if stats.w is None else stats.w * dr
        srr = float(torch.dot(wdr, dr))
        sro = float(torch.dot(stats.wdo, dr))
        r_mean = float(r_mean)
    soo = stats.soo
    floor = min_gain * (max(soo, 1e-300) / max(srr, 1e-300)) ** 0.5
    gain = sro / srr if srr > 0 else floor
    gain = max(gain, floor)
    background = stats.o_mean - gain * r_mean
    return gain, background


def _unit_coords(n: int) -> torch.Tensor:
    """Positions of ``n`` samples along an axis, from -0.5 (first) to 0.5 (last), float64."""
    return torch.linspace(-0.5, 0.5, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)


class FieldStats:
    """What :func:`solve_photometric_field` needs of the observed image and the weight, once per
    fit level: the coordinates (z, y, x in [-0.5, 0.5] over the image), the weighted moments of
    the background plane's columns (1, z, y, x) and their products with the observed image."""

    def __init__(self, observed: torch.Tensor, weight: torch.Tensor | None = None):
        with torch.no_grad():
            o = observed.detach().to(torch.float64)
            w = torch.ones_like(o) if weight is None else weight.detach().to(torch.float64)
            if not float(w.sum()) > 0:
                raise ValueError("weight must have a positive sum")
            nz, ny, nx = o.shape
            self.z, self.y, self.x = _unit_coords(nz), _unit_coords(ny), _unit_coords(nx)
            # per step the render is multiplied by these in its own dtype (float32 in a fit): the
            # per-plane partial sums are then converted to float64
            dt = observed.dtype if observed.dtype in (torch.float32, torch.float64) else torch.float64
            self.w = None if weight is None else w.to(dt)
            wo = w * o
            self.wo = wo.to(dt)
            wz, wzy, wzx = w.sum((1, 2)), w.sum(2), w.sum(1)  # (Z,), (Z, Y), (Z, X)
            wyx = (w.sum(0) * self.y[:, None] * self.x[None, :]).sum()
            self.cc = self._plane_moments(wz, wzy, wzx, wyx)  # sum w c_i c_j, (4, 4)
            self.co = self._plane_sums(wo.sum((1, 2)), wo.sum(2), wo.sum(1))  # sum w o c_i, (4,)
            self.soo = float((wo * o).sum())
        self.shape = tuple(observed.shape)

    def _plane_sums(self, pz, pzy, pzx) -> torch.Tensor:
        """sum q c_i for c = (1, z, y, x), from the partial sums of q over (y, x), x and y."""
        z, y, x = self.z, self.y, self.x
        return torch.stack([pz.sum(), (pz * z).sum(), (pzy.sum(0) * y).sum(), (pzx.sum(0) * x).sum()])

    def _plane_moments(self, pz, pzy, pzx, pyx) -> torch.Tensor:
        """sum q c_i c_j (4 x 4) for c = (1, z, y, x), from the partial sums of q over (y, x), x
        and y, and ``pyx`` = sum q y x."""
        z, y, x = self.z, self.y, self.x
        m = torch.empty(4, 4, dtype=torch.float64)
        s1 = self._plane_sums(pz, pzy, pzx)
        m[0] = s1
        m[:, 0] = s1
        m[1, 1] = (pz * z * z).sum()
        m[1, 2] = m[2, 1] = (pzy * z[:, None] * y[None, :]).sum()
        m[1, 3] = m[3, 1] = (pzx * z[:, None] * x[None, :]).sum()
        m[2, 2] = (pzy.sum(0) * y * y).sum()
        m[3, 3] = (pzx.sum(0) * x * x).sum()
        m[2, 3] = m[3, 2] = pyx
        return m


def solve_photometric_field(
    rendered: torch.Tensor, stats: FieldStats, *, min_gain: float = 1e-8
) -> tuple[torch.Tensor, torch.Tensor, tuple[float, float]]:
    """Weighted least squares for ``observed ~ (g0 + g1 z) * rendered + (b0 + b1 z + b2 y + b3 x)``
    (z, y, x in [-0.5, 0.5] over the image): a gain that varies linearly with depth (the
    attenuation of the emitted light in the sample, or a bleaching along the stack) and a
    background plane (uneven illumination, camera offset gradients).

    The 6 x 6 normal equations are formed from partial sums of ``w r``, ``w r^2`` and ``w r o``
    (float64) and solved directly. When the depth gain would not stay positive over the image
    (``min(g0 +- g1 / 2) < min_gain x scale``), g1 is dropped (a constant gain, the background
    plane kept); when the constant gain is not positive either, it is clamped to the floor.

    Returns
    -------
    (gain, (background_z, background_yx), (g_centre, b_centre)) : the gain and the background's
        z part as (Z, 1, 1) tensors and its (y, x) part as a (1, Y, X) tensor (float64, no
        gradient; the model image is ``gain * r + background_z + background_yx``), and the gain
        and background at the image centre.
    """
    if tuple(rendered.shape) != stats.shape:
        raise ValueError(f"rendered shape {tuple(rendered.shape)} differs from observed shape {stats.shape}")
    z, y, x = stats.z, stats.y, stats.x
    with torch.no_grad():
        r = rendered.detach().to(stats.wo.dtype)
        wr = r if stats.w is None else stats.w * r
        f64 = torch.float64
        p_rzy, p_rzx = wr.sum(2).to(f64), wr.sum(1).to(f64)  # partial sums of w r (cascaded)
        p_rz = p_rzy.sum(1)
        rr = (wr * r).sum((1, 2)).to(f64)  # sum_yx w r^2 per plane
        ro = (stats.wo * r).sum((1, 2)).to(f64)  # sum_yx w o r per plane
        # columns a = (r, r z, 1, z, y, x): the normal matrix M = sum w a a^T, rhs sum w a o
        m = torch.empty(6, 6, dtype=torch.float64)
        m[2:, 2:] = stats.cc
        m[0, 0] = rr.sum()
        m[0, 1] = m[1, 0] = (rr * z).sum()
        m[1, 1] = (rr * z * z).sum()
        s_r = stats._plane_sums(p_rz, p_rzy, p_rzx)  # sum w r c
        s_rz = torch.stack(
            [
                (p_rz * z).sum(),
                (p_rz * z * z).sum(),
                (p_rzy * z[:, None] * y[None, :]).sum(),
                (p_rzx * z[:, None] * x[None, :]).sum(),
            ]
        )  # sum w r z c
        m[0, 2:] = m[2:, 0] = s_r
        m[1, 2:] = m[2:, 1] = s_rz
        rhs = torch.cat([torch.stack([ro.sum(), (ro * z).sum()]), stats.co])
        scale = (max(stats.soo, 1e-300) / max(float(m[0, 0]), 1e-300)) ** 0.5
        floor = min_gain * scale

        def solve(keep):
            idx = torch.tensor(keep)
            sol = torch.zeros(6, dtype=torch.float64)
            sub = m[idx][:, idx]
            try:
                sol[idx] = torch.linalg.solve(sub, rhs[idx])
            except RuntimeError:
                sol[idx] = torch.linalg.lstsq(sub, rhs[idx]).solution
            return sol

        theta = solve([0, 1, 2, 3, 4, 5])
        zmin, zmax = float(z.min()), float(z.max())
        if min(float(theta[0] + theta[1] * zmin), float(theta[0] + theta[1] * zmax)) < floor:
            theta = solve([0, 2, 3, 4, 5])
        if float(theta[0]) < floor:  # constant gain at the floor: re-solve the background plane
            theta = torch.zeros(6, dtype=torch.float64)
            theta[0] = floor
            sub = m[2:, 2:]
            theta[2:] = torch.linalg.lstsq(sub, rhs[2:] - floor * m[2:, 0]).solution
        gain = (theta[0] + theta[1] * z).reshape(-1, 1, 1)
        bg_z = (theta[2] + theta[3] * z).reshape(-1, 1, 1)
        bg_yx = (theta[4] * y[:, None] + theta[5] * x[None, :])[None]
    return gain, (bg_z, bg_yx), (float(theta[0]), float(theta[2]))


def solve_two_levels(
    first: torch.Tensor, second: torch.Tensor, observed: torch.Tensor, weight: torch.Tensor | None = None
) -> tuple[float, float, float]:
    """Weighted least squares ``observed ~ a * first + c * second + b`` with ``a, c >= 0``
    (e.g. a membrane image and a cytoplasm image of the same mesh).

    The background is eliminated by centring (weighted means); the 2 x 2 normal equations are
    solved in float64; when the unconstrained optimum has a negative level, the best solution
    on that boundary (one image alone, as :func:`solve_photometric`) is returned.

    Returns
    -------
    (a, c, b) : floats
    """
    with torch.no_grad():
        m = first.detach().to(torch.float64).reshape(-1)
        v = second.detach().to(torch.float64).reshape(-1)
        o = observed.detach().to(torch.float64).reshape(-1)
        w = torch.ones_like(o) if weight is None else weight.detach().to(torch.float64).reshape(-1)
        ws = float(w.sum())
        if not ws > 0:
            raise ValueError("weight must have a positive sum")
        means = [float((w * x).sum()) / ws for x in (m, v, o)]
        dm, dv, do = m - means[0], v - means[1], o - means[2]
        smm, svv, smv = float((w * dm * dm).sum()), float((w * dv * dv).sum()), float((w * dm * dv).sum())
        smo, svo = float((w * dm * do).sum()), float((w * dv * do).sum())
    det = smm * svv - smv * smv
    if det > 1e-12 * max(smm * svv, 1e-300):
        a = (svv * smo - smv * svo) / det
        c = (smm * svo - smv * smo) / det
        if a >= 0 and c >= 0:
            return a, c, means[2] - a * means[0] - c * means[1]
    # on the boundary: the better of (a, 0) and (0, c); a one-image fit with level
    # g = max(s_xo / s_xx, 0) lowers the weighted SSE by g^2 s_xx
    g_m = max(smo / smm, 0.0) if smm > 0 else 0.0
    g_v = max(svo / svv, 0.0) if svv > 0 else 0.0
    if g_m * g_m * smm >= g_v * g_v * svv:
        return g_m, 0.0, means[2] - g_m * means[0]
    return 0.0, g_v, means[2] - g_v * means[1]
