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
    np.testing.assert_allclose(psf.psf(grid, dtype=torch.float64).detach().numpy(), dens, rtol=1e-9, atol=1e-14 * dens.max())
    # a rotated Gaussian is not separable: the cross term matters
    axis_aligned = GaussianPSF(tuple(np.sqrt(np.diag(cov)))).otf(grid, dtype=torch.float64).detach().numpy()
    assert np.abs(axis_aligned - otf).max() > 0.05


def test_gaussian_otf_gradient_wrt_sigma_matches_finite_differences():
    grid = FFTGrid((6, 8, 10), (0.5, 0.15, 0.12))
    model = GaussianPSF((0.9, 0.3, 0.25))

    def otf_of_sigma(sigma):
        return torch.func.functional_call(model, {"log_diag": torch.log(sigma)}, (grid,), {"dtype": torch.float64})

    sigma = torch.tensor([0.9, 0.3, 0.25], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(otf_of_sigma, (sigma,), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gaussian_full_covariance_gradient_matches_finite_differences():
    grid = FFTGrid((6, 8, 10), (0.3, 0.2, 0.2))
    rot = _rotation(0.3, 0.2, -0.5)
    model = GaussianPSF(covariance_um2=rot @ np.diag([0.5, 0.1, 0.06]) @ rot.T)

    def otf_of(log_diag, offdiag):
        return torch.func.functional_call(model, {"log_diag": log_diag, "offdiag": offdiag}, (grid,),
                                          {"dtype": torch.float64})

    ld = model.log_diag.detach().clone().requires_grad_(True)
    od = model.offdiag.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(otf_of, (ld, od), eps=1e-6, atol=1e-7, rtol=1e-5)


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
    for model in (GaussianPSF((1.2, 0.3, 0.25)),
                  GaussianPSF(covariance_um2=rot @ np.diag([0.4, 0.05, 0.03]) @ rot.T)):
        d = model.as_dict()
        back = PSFModel.from_dict(d)
        assert type(back) is GaussianPSF
        grid = FFTGrid((8, 10, 12), 0.15)
        torch.testing.assert_close(back.otf(grid, torch.float64), model.otf(grid, torch.float64))
        assert "GaussianPSF" in model.describe() and "sigma_um" in model.describe()


@pytest.mark.parametrize("kwargs, match", [
    (dict(sigma_um=(1.0, 0.0, 0.2)), "sigma_um must be positive"),
    (dict(sigma_um=(1.0, -0.1, 0.2)), "sigma_um must be positive"),
    (dict(sigma_um=(1.0, float("nan"), 0.2)), "sigma_um must be positive"),
    (dict(sigma_um=(1.0, 0.2)), "sigma_um must have 1 or 3 values"),
    (dict(covariance_um2=np.eye(2)), r"covariance_um2 must have shape \(3, 3\)"),
    (dict(covariance_um2=[[1, 0.5, 0], [0, 1, 0], [0, 0, 1]]), "must be symmetric"),
    (dict(covariance_um2=[[1, 2, 0], [2, 1, 0], [0, 0, 1]]), "positive definite"),
])
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
