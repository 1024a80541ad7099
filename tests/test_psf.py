"""PSF/OTF models against analytic results, numerical transforms and finite differences."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import special, stats

from deltamic_core.grid import FFTGrid
from deltamic_core.psf import GaussianPSF, PSFModel


def _np_freqs(grid):
    fz, fy, fx = (f.numpy() for f in grid.freqs())
    return fz[:, None, None], fy[None, :, None], fx[None, None, :]


def _np_coords(grid):
    z, y, x = (c.numpy() for c in grid.centred_coords())
    return np.stack(np.meshgrid(z, y, x, indexing="ij"), axis=-1)


def _rotation(a, b, c):
    """Rotation matrix from three Euler angles (radians)."""
    ca, sa, cb, sb, cc, sc = math.cos(a), math.sin(a), math.cos(b), math.sin(b), math.cos(c), math.sin(c)
    rz = np.array([[ca, -sa, 0], [sa, ca, 0], [0, 0, 1]])
    ry = np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
    rx = np.array([[1, 0, 0], [0, cc, -sc], [0, sc, cc]])
    return rz @ ry @ rx


# ---------------------------------------------------------------------------------------
# Gaussian
# ---------------------------------------------------------------------------------------
def test_gaussian_otf_is_the_analytic_fourier_transform():
    grid = FFTGrid((24, 40, 36), (0.4, 0.11, 0.13))
    sig = (0.9, 0.21, 0.3)
    otf = GaussianPSF(sig).otf(grid, dtype=torch.float64).detach().numpy()
    fz, fy, fx = _np_freqs(grid)
    ref = np.exp(-2 * np.pi**2 * (sig[0] ** 2 * fz**2 + sig[1] ** 2 * fy**2 + sig[2] ** 2 * fx**2))
    assert otf.shape == grid.rfft_shape
    np.testing.assert_allclose(otf, ref, rtol=1e-12, atol=1e-15)
    assert otf[0, 0, 0] == pytest.approx(1.0, abs=1e-15)


def test_gaussian_otf_respects_dtype_and_is_float32_by_default():
    grid = FFTGrid((8, 8, 8), 0.2)
    psf = GaussianPSF(0.3)
    assert psf.otf(grid).dtype == torch.float32
    assert psf.otf(grid, dtype=torch.float64).dtype == torch.float64
    assert psf(grid).shape == grid.rfft_shape


def test_gaussian_psf_is_the_normalised_analytic_density():
    grid = FFTGrid((40, 48, 48), (0.25, 0.08, 0.09))
    sig = np.array([0.9, 0.25, 0.3])
    h = GaussianPSF(tuple(sig)).psf(grid, dtype=torch.float64).detach().numpy()
    ref = stats.multivariate_normal(mean=np.zeros(3), cov=np.diag(sig**2)).pdf(_np_coords(grid))
    np.testing.assert_allclose(h, ref, rtol=1e-10, atol=1e-14 * ref.max())
    assert h.sum() * grid.voxel_volume_um3 == pytest.approx(1.0, abs=1e-6)
    assert np.unravel_index(h.argmax(), h.shape) == (0, 0, 0)


def test_gaussian_rfftn_of_psf_matches_otf_when_well_sampled():
    grid = FFTGrid((48, 64, 64), (0.2, 0.07, 0.07))
    psf = GaussianPSF((0.8, 0.2, 0.25))
    h = psf.psf(grid, dtype=torch.float64)
    numerical = torch.fft.rfftn(h) * grid.voxel_volume_um3
    otf = psf.otf(grid, dtype=torch.float64)
    assert float((numerical - otf).abs().max().detach()) < 1e-6


def test_gaussian_full_covariance_rotated_matches_numerical_fft():
    rot = _rotation(0.4, -0.7, 1.1)
    cov = rot @ np.diag([0.45**2, 0.3**2, 0.2**2]) @ rot.T
    grid = FFTGrid((64, 64, 64), (0.08, 0.08, 0.08))
    psf = GaussianPSF(covariance_um2=cov)
    assert psf.is_full_covariance
    np.testing.assert_allclose(psf.covariance_um2.detach().numpy(), cov, atol=1e-14)
    np.testing.assert_allclose(psf.sigma_um.detach().numpy(), np.sqrt(np.diag(cov)), rtol=1e-12)
    # independent truth: scipy's density sampled on the grid, FFT'd numerically
    dens = stats.multivariate_normal(mean=np.zeros(3), cov=cov).pdf(_np_coords(grid))
    numerical = np.fft.rfftn(dens) * grid.voxel_volume_um3
    otf = psf.otf(grid, dtype=torch.float64).detach().numpy()
    assert np.abs(numerical - otf).max() < 1e-6
    np.testing.assert_allclose(
        psf.psf(grid, dtype=torch.float64).detach().numpy(), dens, rtol=1e-9, atol=1e-14 * dens.max()
    )
    # a rotated Gaussian is not separable: the cross term matters
    axis_aligned = GaussianPSF(tuple(np.sqrt(np.diag(cov)))).otf(grid, dtype=torch.float64).detach().numpy()
    assert np.abs(axis_aligned - otf).max() > 0.05


def test_gaussian_otf_gradient_wrt_sigma_matches_finite_differences():
    grid = FFTGrid((6, 8, 10), (0.5, 0.15, 0.12))
    model = GaussianPSF((0.9, 0.3, 0.25))

    def otf_of_sigma(sigma):
        return torch.func.functional_call(model, {"log_diag": torch.log(sigma)}, (grid,), {"dtype": torch.float64})

    sigma = torch.tensor([0.9, 0.3, 0.25], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(otf_of_sigma, (sigma,), eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)


def test_gaussian_full_covariance_gradient_matches_finite_differences():
    grid = FFTGrid((6, 8, 10), (0.3, 0.2, 0.2))
    rot = _rotation(0.3, 0.2, -0.5)
    model = GaussianPSF(covariance_um2=rot @ np.diag([0.5, 0.1, 0.06]) @ rot.T)

    def otf_of(log_diag, offdiag):
        return torch.func.functional_call(
            model, {"log_diag": log_diag, "offdiag": offdiag}, (grid,), {"dtype": torch.float64}
        )

    ld = model.log_diag.detach().clone().requires_grad_(True)
    od = model.offdiag.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(otf_of, (ld, od), eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)


def test_gaussian_parameters_are_learnable_and_freezable():
    model = GaussianPSF((1.0, 0.2, 0.2))
    names = {n for n, p in model.named_parameters()}
    assert names == {"log_diag"}
    grid = FFTGrid((8, 8, 8), 0.1)
    model.otf(grid).sum().backward()
    assert model.log_diag.grad is not None and bool(torch.all(model.log_diag.grad < 0))
    model.requires_grad_(False)
    assert not model.otf(grid).requires_grad
    full = GaussianPSF(covariance_um2=np.diag([1.0, 0.04, 0.04]))
    assert {n for n, _ in full.named_parameters()} == {"log_diag", "offdiag"}


def test_gaussian_extent_covers_the_psf():
    model = GaussianPSF((1.0, 0.2, 0.3))
    ez, ey, ex = model.extent_um()
    assert (ez, ey, ex) == pytest.approx((4.0, 0.8, 1.2))
    # the density at the extent is below 1e-3 of the peak along each axis
    for e, s in zip((ez, ey, ex), (1.0, 0.2, 0.3)):
        assert math.exp(-0.5 * (e / s) ** 2) < 1e-3


def test_gaussian_from_optics_matches_peak_curvature_of_paraxial_widefield_psf():
    na, lam, n = 1.2, 0.52, 1.33
    model = GaussianPSF.from_optics(na, lam, n)
    sz, sy, sx = model.sigma_um.detach().numpy()
    k = 2 * np.pi / lam
    h = 1e-3  # um, small step for the curvature at the peak
    airy = (2 * special.j1(k * na * h) / (k * na * h)) ** 2
    sinc2 = np.sinc(k * na**2 * h / (4 * n) / np.pi) ** 2  # np.sinc(x) = sin(pi x)/(pi x)
    assert 1 / sy**2 == pytest.approx(2 * (1 - airy) / h**2, rel=1e-4)
    assert 1 / sz**2 == pytest.approx(2 * (1 - sinc2) / h**2, rel=1e-4)
    assert sy == sx
    conf = GaussianPSF.from_optics(na, lam, n, confocal=True).sigma_um.detach().numpy()
    np.testing.assert_allclose(conf, np.array([sz, sy, sx]) / np.sqrt(2), rtol=1e-12)
    # a shorter excitation wavelength narrows the confocal PSF further
    conf2 = GaussianPSF.from_optics(na, lam, n, confocal=True, excitation_wavelength_um=0.488).sigma_um
    assert bool(torch.all(conf2 < torch.as_tensor(conf)))


def test_gaussian_dict_round_trip_and_description():
    rot = _rotation(0.1, 0.2, 0.3)
    for model in (GaussianPSF((1.2, 0.3, 0.25)), GaussianPSF(covariance_um2=rot @ np.diag([0.4, 0.05, 0.03]) @ rot.T)):
        d = model.as_dict()
        back = PSFModel.from_dict(d)
        assert type(back) is GaussianPSF
        grid = FFTGrid((8, 10, 12), 0.15)
        torch.testing.assert_close(back.otf(grid, torch.float64), model.otf(grid, torch.float64))
        assert "GaussianPSF" in model.describe() and "sigma_um" in model.describe()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sigma_um=(1.0, 0.0, 0.2)), "sigma_um must be positive"),
        (dict(sigma_um=(1.0, -0.1, 0.2)), "sigma_um must be positive"),
        (dict(sigma_um=(1.0, float("nan"), 0.2)), "sigma_um must be positive"),
        (dict(sigma_um=(1.0, 0.2)), "sigma_um must have 1 or 3 values"),
        (dict(covariance_um2=np.eye(2)), r"covariance_um2 must have shape \(3, 3\)"),
        (dict(covariance_um2=[[1, 0.5, 0], [0, 1, 0], [0, 0, 1]]), "must be symmetric"),
        (dict(covariance_um2=[[1, 2, 0], [2, 1, 0], [0, 0, 1]]), "positive definite"),
    ],
)
def test_gaussian_bad_input_raises_clear_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GaussianPSF(**kwargs)


def test_gaussian_from_optics_bad_input():
    with pytest.raises(ValueError, match="na must be smaller than n_immersion"):
        GaussianPSF.from_optics(1.4, 0.5, 1.33)
    with pytest.raises(ValueError, match="wavelength_um must be positive"):
        GaussianPSF.from_optics(1.0, -0.5, 1.33)
    with pytest.raises(TypeError, match="grid must be"):
        GaussianPSF(0.3).otf((8, 8, 8))


# ---------------------------------------------------------------------------------------
# shared helpers for the numerical models
# ---------------------------------------------------------------------------------------
from scipy import integrate  # noqa: E402

from deltamic_core.psf import GibsonLanniPSF, HanserPSF, MeasuredPSF, noll_to_nm, psf_from_dict, zernike_noll  # noqa: E402
from deltamic_core.psf._sampling import crop_spectrum  # noqa: E402
from psf_helpers import gibson_lanni  # noqa: E402


def _gl_quad(na, lam, ni, ns, pz, z_rel, r, ng=1.515, tg=170.0, ti0=150.0):
    """Gibson-Lanni intensity by adaptive quadrature (scipy), design = actual coverslip/immersion."""
    k0 = 2 * np.pi / lam
    ci = pz * (1 - ni / ns) + ni * (tg / ng + ti0 / ni - tg / ng)

    def w(rho):
        s2 = (na * rho) ** 2
        c = lambda n: np.sqrt(complex(n * n - s2))
        return (ci - (pz + z_rel)) * c(ni) + pz * c(ns) + tg * c(ng) - tg * c(ng) - ti0 * c(ni)

    f = lambda rho: np.exp(1j * k0 * w(rho)) * special.j0(k0 * na * r * rho) * rho
    pts = [ns / na] if ns < na else None
    re = integrate.quad(lambda t: f(t).real, 0, 1, limit=4000, epsabs=1e-14, epsrel=1e-12, points=pts)[0]
    im = integrate.quad(lambda t: f(t).imag, 0, 1, limit=4000, epsabs=1e-14, epsrel=1e-12, points=pts)[0]
    return re * re + im * im


# ---------------------------------------------------------------------------------------
# Gibson-Lanni
# ---------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(
    "na, ni, ns, pz",
    [
        (1.3, 1.515, 1.515, 0.0),  # index matched
        (1.4, 1.515, 1.33, 10.0),  # depth-induced spherical aberration, supercritical angles
        (1.1, 1.33, 1.45, 15.0),  # water objective into a denser sample
    ],
)
def test_gibson_lanni_radial_integral_matches_adaptive_quadrature(na, ni, ns, pz):
    lam = 0.55
    model = gibson_lanni(na=na, wavelength_um=lam, n=ni, n_sample=ns, particle_depth_um=pz)
    pts = [(0.0, 0.0), (0.6, 0.0), (-1.2, 0.15), (1.5, 0.4), (2.5, 0.9), (-3.0, 0.3)]
    z = torch.tensor([p[0] for p in pts], dtype=torch.float64)
    r = torch.tensor(sorted({p[1] for p in pts}), dtype=torch.float64)
    prof = model.radial_profile(z, r).detach().numpy()
    mine = np.array([prof[i, list(r.numpy()).index(p[1])] for i, p in enumerate(pts)])
    ref = np.array([_gl_quad(na, lam, ni, ns, pz, zz, rr) for zz, rr in pts])
    scale = max(ref.max(), _gl_quad(na, lam, ni, ns, pz, 0.3, 0.0))
    assert np.abs(mine - ref).max() / scale < 2e-4


def test_gibson_lanni_grid_otf_is_the_rfftn_of_the_normalised_psf_when_well_sampled():
    model = gibson_lanni(na=1.2, wavelength_um=0.55, n=1.33, n_sample=1.38, particle_depth_um=5.0, otf_method="grid")
    grid = FFTGrid((32, 48, 48), (0.15, 0.05, 0.05))
    assert model._fine_intensity(grid)[1] == (1, 1, 1)  # this grid needs no oversampling
    h = model.psf(grid, dtype=torch.float64).detach()
    assert float(h.sum()) * grid.voxel_volume_um3 == pytest.approx(1.0, abs=1e-9)
    otf = model.otf(grid, dtype=torch.float64).detach()
    assert otf.shape == grid.rfft_shape and otf.dtype == torch.complex128
    assert complex(otf[0, 0, 0]) == pytest.approx(1.0, abs=1e-12)
    assert float((torch.fft.rfftn(h) * grid.voxel_volume_um3 - otf).abs().max()) < 1e-9
    assert model.otf(grid).dtype == torch.complex64
    # the OTF vanishes beyond the lateral cut-off 2 NA / lambda
    fz, fy, fx = grid.freq_grid()
    kr = torch.sqrt(fy**2 + fx**2).expand_as(otf)
    assert float(otf.abs()[kr > 1.02 * 2 * 1.2 / 0.55].max()) < 1e-3


def test_gibson_lanni_hankel_otf_pipeline_transforms_a_gaussian_exactly():
    """Feed the Hankel + axial FFT + radial interpolation pipeline a Gaussian profile (whose
    OTF is known in closed form) in place of the Gibson-Lanni integral."""
    model = gibson_lanni(na=1.0, wavelength_um=0.55, n=1.33, n_sample=1.33)
    sz, sr = 0.6, 0.2
    model.radial_profile = lambda z, r: torch.exp(-0.5 * (z[:, None] / sz) ** 2 - 0.5 * (r[None, :] / sr) ** 2)
    grid = FFTGrid((24, 40, 36), (0.3, 0.09, 0.1))
    otf = model.otf(grid, dtype=torch.float64)
    fz, fy, fx = grid.freq_grid()
    ref = torch.exp(-2 * math.pi**2 * (sz**2 * fz**2 + sr**2 * (fy**2 + fx**2)))
    ref = torch.where(torch.sqrt(fy**2 + fx**2) <= 2 * 1.0 / 0.55, ref, torch.zeros_like(ref))
    assert float((otf - ref).abs().max()) < 1e-4
    h = model.psf(grid, dtype=torch.float64)
    dens = GaussianPSF((sz, sr, sr)).psf(grid, dtype=torch.float64)
    assert float((h - dens).abs().max() / dens.max()) < 1e-4


def test_gibson_lanni_hankel_and_grid_otfs_agree_away_from_the_missing_cone():
    """The two OTF methods differ only in the lateral domain the PSF is integrated over (the
    disc inscribed in the box vs the periodic box); for a widefield PSF that matters only at
    low lateral frequencies, where the wide, dim, defocused planes put their energy."""
    kw = dict(
        na=1.3, wavelength_um=0.52, n_immersion=1.515, n_immersion_design=1.515, n_sample=1.38, particle_depth_um=5.0
    )
    grid = FFTGrid((32, 64, 64), (0.2, 0.08, 0.08))
    hankel = GibsonLanniPSF(**kw).otf(grid, dtype=torch.float64).detach()
    full = GibsonLanniPSF(**kw, otf_method="grid").otf(grid, dtype=torch.float64).detach()
    fz, fy, fx = grid.freq_grid()
    kr = torch.sqrt(fy**2 + fx**2).expand_as(hankel)
    assert float((hankel - full).abs()[kr > 0.15 * 2 * 1.3 / 0.52].max()) < 1e-2
    assert float((hankel - full).abs().max()) < 5e-2


@pytest.mark.slow
@pytest.mark.parametrize(
    "model",
    [
        gibson_lanni(na=0.9, wavelength_um=0.5, n=1.33, n_sample=1.33),
        HanserPSF(0.9, 0.5, 1.33, {11: 0.1}),
    ],
    ids=["gibson_lanni", "hanser"],
)
def test_otf_of_an_undersampled_grid_is_alias_free(model):
    coarse = FFTGrid((16, 24, 24), (0.6, 0.2, 0.2))  # 0.2 um > lambda / (4 NA) = 0.14 um
    factors = model._fine_intensity(coarse)[1]
    assert factors[1] > 1 and factors[2] > 1
    finer = FFTGrid(
        tuple(n * 2 * f for n, f in zip(coarse.shape, factors)),
        tuple(s / (2 * f) for s, f in zip(coarse.spacing_um, factors)),
    )
    otf = model.otf(coarse, dtype=torch.float64).detach()
    ref = crop_spectrum(model.otf(finer, dtype=torch.float64).detach(), coarse)
    naive = torch.fft.rfftn(model.psf(coarse, dtype=torch.float64).detach())
    naive = naive / naive[0, 0, 0]
    err = float((otf - ref).abs().max())
    # the residual is the PSF tail leaving the (small) box; the aliased DFT is 10x worse
    assert err < 1e-2
    assert float((naive - ref).abs().max()) > 5 * err


@pytest.mark.slow
def test_gibson_lanni_otf_gradients_match_finite_differences():
    grid = FFTGrid((6, 8, 8), (0.3, 0.12, 0.12))
    model = gibson_lanni(na=1.2, wavelength_um=0.55, n=1.33, n_sample=1.4, particle_depth_um=4.0)
    assert {n for n, _ in model.named_parameters()} == {"log_na", "log_n_sample", "particle_depth_um_"}

    def otf_of(log_na, log_n_sample, depth):
        return torch.func.functional_call(
            model,
            {"log_na": log_na, "log_n_sample": log_n_sample, "particle_depth_um_": depth},
            (grid,),
            {"dtype": torch.float64},
        )

    args = tuple(
        t.detach().clone().requires_grad_(True) for t in (model.log_na, model.log_n_sample, model.particle_depth_um_)
    )
    assert torch.autograd.gradcheck(otf_of, args, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_gibson_lanni_psf_interpolates_the_radial_profile_accurately():
    model = gibson_lanni(na=1.3, wavelength_um=0.55, n=1.515, n_sample=1.4, particle_depth_um=3.0)
    grid = FFTGrid((8, 40, 40), (0.3, 0.065, 0.07))
    h = model.psf(grid, dtype=torch.float64).detach()
    z, y, x = grid.centred_coords()
    iy, ix = torch.meshgrid(torch.arange(40), torch.arange(40), indexing="ij")
    sel = (iy * 7 + ix * 3) % 11 == 0  # a scatter of off-axis pixels
    r = torch.sqrt(y[iy[sel]] ** 2 + x[ix[sel]] ** 2)
    exact = model.radial_profile(z, r).detach()
    got = h[:, iy[sel], ix[sel]]
    scale = exact.max() / h.max()
    assert float((got * scale - exact).abs().max() / exact.max()) < 2e-4


@pytest.mark.slow
def test_gibson_lanni_extent_bounds_the_psf():
    model = gibson_lanni(na=1.3, wavelength_um=0.55, n=1.515, n_sample=1.515, max_extent_um=(12, 8, 8))
    ez, ey, ex = model.extent_um()
    assert 0.5 < ez < 12 and 0.3 < ey < 8 and ey == ex
    z = torch.linspace(-14.0, 14.0, 281, dtype=torch.float64)
    r = torch.linspace(0.0, 9.0, 361, dtype=torch.float64)
    h = model.radial_profile(z, r).detach()
    peak = float(h.max())
    assert float(h[z.abs() > ez].max()) < 1e-3 * peak
    assert float(h[:, r > ey].max()) < 1.2e-3 * peak
    # and it is tight: just inside it the PSF still reaches the threshold somewhere
    assert float(h[(z.abs() > ez - 1.0) & (z.abs() <= ez)].max()) > 0.5e-3 * peak


def test_gibson_lanni_bad_input():
    with pytest.raises(ValueError, match="na must be smaller than n_immersion"):
        GibsonLanniPSF(na=1.4, n_immersion=1.33, n_immersion_design=1.515)
    with pytest.raises(ValueError, match="particle_depth_um must be non-negative"):
        GibsonLanniPSF(particle_depth_um=-1.0)
    with pytest.raises(ValueError, match="n_sample must be positive"):
        GibsonLanniPSF(n_sample=0.0)
    with pytest.raises(ValueError, match="learn names unknown parameters"):
        GibsonLanniPSF(learn=("sigma",))


# ---------------------------------------------------------------------------------------
# Zernike / Hanser
# ---------------------------------------------------------------------------------------
def test_noll_indices_and_polynomials_match_known_formulas():
    rho = torch.linspace(0.0, 1.0, 7, dtype=torch.float64)[:, None]
    phi = torch.linspace(-3.0, 3.0, 5, dtype=torch.float64)[None, :]
    known = {
        1: (0, 0, lambda r, p: torch.ones_like(r * p)),
        2: (1, 1, lambda r, p: 2 * r * torch.cos(p)),
        3: (1, -1, lambda r, p: 2 * r * torch.sin(p)),
        4: (2, 0, lambda r, p: math.sqrt(3) * (2 * r**2 - 1) + 0 * p),
        5: (2, -2, lambda r, p: math.sqrt(6) * r**2 * torch.sin(2 * p)),
        6: (2, 2, lambda r, p: math.sqrt(6) * r**2 * torch.cos(2 * p)),
        7: (3, -1, lambda r, p: math.sqrt(8) * (3 * r**3 - 2 * r) * torch.sin(p)),
        8: (3, 1, lambda r, p: math.sqrt(8) * (3 * r**3 - 2 * r) * torch.cos(p)),
        9: (3, -3, lambda r, p: math.sqrt(8) * r**3 * torch.sin(3 * p)),
        10: (3, 3, lambda r, p: math.sqrt(8) * r**3 * torch.cos(3 * p)),
        11: (4, 0, lambda r, p: math.sqrt(5) * (6 * r**4 - 6 * r**2 + 1) + 0 * p),
        12: (4, 2, lambda r, p: math.sqrt(10) * (4 * r**4 - 3 * r**2) * torch.cos(2 * p)),
        13: (4, -2, lambda r, p: math.sqrt(10) * (4 * r**4 - 3 * r**2) * torch.sin(2 * p)),
        22: (6, 0, lambda r, p: math.sqrt(7) * (20 * r**6 - 30 * r**4 + 12 * r**2 - 1) + 0 * p),
    }
    for j, (n, m, f) in known.items():
        assert noll_to_nm(j) == (n, m)
        torch.testing.assert_close(zernike_noll(j, rho, phi), f(rho, phi), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="Noll index must be >= 1"):
        noll_to_nm(0)


def test_zernike_polynomials_are_orthonormal_over_the_disc():
    # Gauss-Legendre in rho x uniform in phi integrates these polynomials exactly
    x, w = np.polynomial.legendre.leggauss(24)
    rho = torch.as_tensor(0.5 * (x + 1), dtype=torch.float64)[:, None]
    wr = torch.as_tensor(0.5 * w, dtype=torch.float64)[:, None] * rho
    phi = torch.linspace(0, 2 * math.pi, 65, dtype=torch.float64)[:-1][None, :]
    js = range(1, 22)
    zs = [zernike_noll(j, rho, phi) for j in js]
    gram = torch.tensor([[float((a * b * wr).sum() * (2 * math.pi / 64) / math.pi) for b in zs] for a in zs])
    torch.testing.assert_close(gram, torch.eye(len(zs), dtype=gram.dtype), atol=1e-12, rtol=0)


def test_hanser_psf_normalised_symmetric_and_consistent_with_otf():
    model = HanserPSF(1.2, 0.55, 1.33)
    grid = FFTGrid((32, 64, 64), (0.15, 0.05, 0.05))
    h = model.psf(grid, dtype=torch.float64).detach()
    assert float(h.sum()) * grid.voxel_volume_um3 == pytest.approx(1.0, abs=1e-9)
    assert tuple(np.unravel_index(int(h.argmax()), h.shape)) == (0, 0, 0)
    # no aberration: symmetric under z -> -z and y -> -y (FFT order: index i <-> -i)
    flip = lambda t, d: torch.roll(torch.flip(t, (d,)), 1, d)
    torch.testing.assert_close(flip(h, 0), h, atol=1e-12 * float(h.max()), rtol=0)
    torch.testing.assert_close(flip(h, 1), h, atol=1e-12 * float(h.max()), rtol=0)
    otf = model.otf(grid, dtype=torch.float64).detach()
    assert complex(otf[0, 0, 0]) == pytest.approx(1.0, abs=1e-12)
    assert float((torch.fft.rfftn(h) * grid.voxel_volume_um3 - otf).abs().max()) < 1e-9


def test_hanser_zernike_coma_breaks_lateral_symmetry_along_its_axis():
    grid = FFTGrid((16, 48, 48), (0.2, 0.05, 0.05))
    h = HanserPSF(1.2, 0.55, 1.33, {8: 0.25}).psf(grid, dtype=torch.float64).detach()  # x coma
    flip = lambda t, d: torch.roll(torch.flip(t, (d,)), 1, d)
    torch.testing.assert_close(flip(h, 1), h, atol=1e-12 * float(h.max()), rtol=0)  # y mirror kept
    assert float((flip(h, 2) - h).abs().max()) > 0.05 * float(h.max())  # x mirror broken


@pytest.mark.slow
def test_hanser_gradients_wrt_zernike_and_na_match_finite_differences():
    grid = FFTGrid((6, 12, 12), (0.3, 0.08, 0.08))
    model = HanserPSF(1.1, 0.55, 1.33, {4: 0.1, 11: -0.05}, learn=("zernike", "na"))
    assert {n for n, _ in model.named_parameters()} == {"zernike_waves", "log_na"}

    def otf_of(coef, log_na):
        return torch.func.functional_call(
            model, {"zernike_waves": coef, "log_na": log_na}, (grid,), {"dtype": torch.float64}
        )

    args = (
        model.zernike_waves.detach().clone().requires_grad_(True),
        model.log_na.detach().clone().requires_grad_(True),
    )
    assert torch.autograd.gradcheck(otf_of, args, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_hanser_bad_input():
    with pytest.raises(ValueError, match="na must be smaller than n_immersion"):
        HanserPSF(1.4, 0.5, 1.33)
    with pytest.raises(ValueError, match="zernike has a bad key"):
        HanserPSF(1.0, 0.5, 1.33, {0: 0.1})
    with pytest.raises(ValueError, match="apodization must be one of"):
        HanserPSF(1.0, 0.5, 1.33, apodization="cosine")
    with pytest.raises(TypeError, match="zernike must be a dict"):
        HanserPSF(1.0, 0.5, 1.33, [0.1])


# ---------------------------------------------------------------------------------------
# Measured
# ---------------------------------------------------------------------------------------
def _synthetic_bead(
    rng, shape=(32, 48, 48), sigma_vox=(2.0, 1.5, 1.5), centre=(15.3, 21.6, 25.27), counts=3e5, background=30.0
):
    idx = np.indices(shape).astype(float)
    g = np.exp(-0.5 * sum(((idx[i] - centre[i]) / sigma_vox[i]) ** 2 for i in range(3)))
    return rng.poisson(background + counts * g / g.sum()).astype(np.float32)


@pytest.mark.parametrize("background", [None, 30.0])
def test_measured_psf_from_noisy_shifted_bead_is_centred_normalised_and_close_to_truth(background):
    rng = np.random.default_rng(1)
    spacing = (0.3, 0.1, 0.1)
    sigma_vox = np.array([2.0, 1.5, 1.5])
    centre = (15.3, 21.6, 25.27)
    img = _synthetic_bead(rng, sigma_vox=tuple(sigma_vox), centre=centre)
    model = MeasuredPSF.from_bead_image(img, spacing, background=background)
    np.testing.assert_allclose(model.bead_centre_voxels, centre, atol=0.05)
    cen_vox = np.array(model.centroid_um()) / np.array(spacing)
    assert np.abs(cen_vox).max() < 0.05
    grid = model.grid
    assert float(model.samples.sum()) * grid.voxel_volume_um3 == pytest.approx(1.0, abs=1e-9)
    truth = GaussianPSF(tuple(sigma_vox * np.array(spacing)))
    t = truth.psf(grid, dtype=torch.float64).detach()
    assert float((model.samples - t).abs().max() / t.max()) < 0.06
    assert float((model.otf(grid, torch.float64) - truth.otf(grid, torch.float64)).abs().max()) < 0.03
    # another renderer grid (other spacing and box): the DTFT resamples exactly
    other = FFTGrid((40, 64, 64), (0.25, 0.08, 0.08))
    assert float((model.otf(other, torch.float64) - truth.otf(other, torch.float64)).abs().max()) < 0.03
    assert model.requires_grad_(False) is model and not list(model.parameters())


def test_measured_otf_on_its_own_grid_is_the_rfftn_and_zero_beyond_its_band():
    rng = np.random.default_rng(2)
    arr = np.fft.ifftshift(rng.random((8, 10, 12)) ** 4)
    model = MeasuredPSF(arr, (0.4, 0.2, 0.25))
    grid = model.grid
    ref = torch.fft.rfftn(model.samples) * grid.voxel_volume_um3
    torch.testing.assert_close(model.otf(grid, torch.float64), ref, atol=1e-12, rtol=0)
    finer = FFTGrid((16, 20, 24), (0.2, 0.1, 0.125))
    o = model.otf(finer, torch.float64)
    fz, fy, fx = finer.freq_grid()
    outside = (fz.abs() > 0.5 / 0.4 + 1e-9) | (fy.abs() > 0.5 / 0.2 + 1e-9) | (fx.abs() > 0.5 / 0.25 + 1e-9)
    assert float(o[outside.expand_as(o)].abs().max()) == 0.0
    # inside the band the finer grid's OTF equals the coarse one at the shared frequencies
    torch.testing.assert_close(crop_spectrum(o, grid), ref, atol=1e-12, rtol=0)


def test_measured_as_dict_leaves_samples_out_unless_asked():
    model = MeasuredPSF(np.fft.ifftshift(np.pad(np.ones((3, 3, 3)), 2)), (0.3, 0.1, 0.1))
    d = model.as_dict()
    assert "samples" not in d and d["shape"] == [7, 7, 7]
    np.testing.assert_allclose(d["fwhm_um"], [0.9, 0.3, 0.3], rtol=1e-9)
    with pytest.raises(ValueError, match="include_samples=True"):
        psf_from_dict(d)


def test_measured_bad_input():
    with pytest.raises(ValueError, match=r"image must be a 3D \(Z, Y, X\) array"):
        MeasuredPSF.from_bead_image(np.ones((10, 10)), (0.1, 0.1, 0.1))
    img = np.ones((8, 8, 8))
    img[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="image contains NaN"):
        MeasuredPSF.from_bead_image(img, (0.1, 0.1, 0.1))
    noise = np.random.default_rng(3).poisson(50.0, (16, 16, 16)).astype(float)
    with pytest.raises(ValueError, match="no bead above the noise"):
        MeasuredPSF.from_bead_image(noise, (0.2, 0.1, 0.1), snr_threshold=50.0)
    with pytest.raises(ValueError, match="psf must be non-negative"):
        MeasuredPSF(-np.ones((4, 4, 4)), 0.1)
    with pytest.raises(ValueError, match="spacing_um must be positive"):
        MeasuredPSF.from_bead_image(np.ones((8, 8, 8)), (0.1, 0.0, 0.1))


# ---------------------------------------------------------------------------------------
# every model: the contract
# ---------------------------------------------------------------------------------------
def _all_models():
    rng = np.random.default_rng(4)
    return [
        GaussianPSF((0.6, 0.15, 0.2)),
        gibson_lanni(na=1.0, wavelength_um=0.55, n=1.33, n_sample=1.36, particle_depth_um=3.0),
        HanserPSF(1.0, 0.55, 1.33, {5: 0.1, 11: 0.05}),
        MeasuredPSF.from_bead_image(
            _synthetic_bead(rng, shape=(16, 24, 24), centre=(7.6, 11.2, 12.1)), (0.3, 0.1, 0.1)
        ),
    ]


@pytest.mark.parametrize("model", _all_models(), ids=lambda m: type(m).__name__)
def test_every_model_honours_the_contract(model):
    grid = FFTGrid((12, 20, 18), (0.3, 0.1, 0.11))
    otf = model.otf(grid)
    assert otf.shape == grid.rfft_shape
    assert otf.dtype in (torch.float32, torch.complex64)
    assert abs(complex(otf[0, 0, 0]) - 1.0) < 1e-6
    assert float(otf.abs().max()) <= 1.0 + 1e-5
    h = model.psf(grid)
    # (a measured PSF resampled by Fourier interpolation rings slightly below zero)
    assert h.shape == grid.shape and h.dtype == torch.float32 and float(h.min()) >= -1e-2 * float(h.max())
    ext = model.extent_um()
    assert len(ext) == 3 and all(isinstance(e, float) and e > 0 for e in ext)
    d = model.as_dict(include_samples=True) if isinstance(model, MeasuredPSF) else model.as_dict()
    back = psf_from_dict(d)
    assert type(back) is type(model)
    torch.testing.assert_close(back.otf(grid, torch.float64), model.otf(grid, torch.float64), atol=1e-12, rtol=0)
    assert type(model).__name__ in model.describe()
    model.requires_grad_(False)
    assert not model.otf(grid).requires_grad
    with pytest.raises(TypeError, match="dtype must be"):
        model.otf(grid, dtype=torch.int32)
