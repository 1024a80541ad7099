"""pipeline.psfspec: one PSF builder for the CLI and the widget, one Zernike syntax."""

from __future__ import annotations

import math

import pytest

from deltamic_core.pipeline import InputError, PSFSpec, make_psf, parse_zernike
from deltamic_core.psf import GaussianPSF, GibsonLanniPSF, HanserPSF


def test_parse_zernike_one_syntax_for_strings_and_option_lists():
    assert parse_zernike("") == {}
    assert parse_zernike("4=0.1, 11=-0.05") == {4: 0.1, 11: -0.05}
    assert parse_zernike(["4=0.1", "11=-0.05"]) == {4: 0.1, 11: -0.05}
    assert parse_zernike({5: 0.2}) == {5: 0.2}
    for bad, match in (
        ("0=1", "Noll index must be >= 1"),
        ("4 0.1", "NOLL=COEFF"),
        ("4: 0.1", "NOLL=COEFF"),
        ("4=nan", "coefficient finite"),
        ("x=1", "NOLL=COEFF"),
    ):
        with pytest.raises(InputError, match=match):
            parse_zernike(bad)


def test_default_gaussian_is_one_voxel_per_axis():
    psf = make_psf(PSFSpec(), (0.5, 0.25, 0.2))
    assert isinstance(psf, GaussianPSF)
    assert psf.sigma_um.tolist() == pytest.approx([0.5, 0.25, 0.2])


def test_gaussian_from_optics_matches_the_paraxial_formulas():
    na, lam, n = 1.2, 0.52, 1.33
    psf = make_psf(PSFSpec("gaussian", {"na": na, "wavelength_um": lam, "n_immersion": n}), (1, 1, 1))
    k = 2 * math.pi / lam  # sigma_xy = sqrt(2)/(k NA), sigma_z = 2 sqrt(6) n/(k NA^2)
    assert psf.sigma_um.tolist() == pytest.approx(
        [2 * math.sqrt(6) * n / (k * na**2), math.sqrt(2) / (k * na), math.sqrt(2) / (k * na)], rel=1e-5
    )


def test_models_get_the_immersion_index_under_one_name():
    optics = {"na": 1.2, "wavelength_um": 0.52, "n_immersion": 1.4}
    gl = make_psf(PSFSpec("gibson-lanni", {**optics, "n_sample": 1.38, "depth_um": 3.0}), (1, 1, 1))
    assert isinstance(gl, GibsonLanniPSF)
    d = gl.as_dict()
    assert (d["n_immersion"], d["n_immersion_design"], d["n_sample"], d["particle_depth_um"]) == pytest.approx(
        (1.4, 1.4, 1.38, 3.0)
    )
    assert not gl.vectorial
    vec = make_psf(PSFSpec("gibson-lanni", {**optics, "n_sample": 1.38, "vectorial": True}), (1, 1, 1))
    assert vec.vectorial and vec.as_dict()["vectorial"] is True
    h = make_psf(PSFSpec("hanser", {**optics, "zernike": "11=0.1"}), (1, 1, 1))
    assert isinstance(h, HanserPSF)
    assert h.as_dict()["n_immersion"] == pytest.approx(1.4)
    assert {int(k): v for k, v in h.as_dict()["zernike"].items()} == pytest.approx({11: 0.1})


@pytest.mark.parametrize(
    "spec, match",
    [
        (PSFSpec("hanser", {"na": 1.2}), "--psf hanser needs --wavelength --ni"),
        (PSFSpec("gibson-lanni", {"na": 1.2, "wavelength_um": 0.5, "n_immersion": 1.5}), "needs --ns"),
        (PSFSpec("hanser", {"sigma_um": (1.0,)}), "--sigma applies to --psf gaussian, not --psf hanser"),
        (PSFSpec("gaussian", {"depth_um": 1.0}), "--depth applies to --psf gibson-lanni"),
        (PSFSpec("confocal", {"vectorial": True}), "--vectorial applies to --psf gibson-lanni"),
        (PSFSpec("gaussian", {"na": 1.2}), "needs --na, --wavelength and --ni"),
        (PSFSpec("gaussian", {"sigma_um": (1.0, 2.0)}), "--sigma takes 1 or 3 values"),
        (PSFSpec("airy"), "unknown PSF model 'airy'"),
        (PSFSpec("hanser", {"na": 1.6, "wavelength_um": 0.5, "n_immersion": 1.5}), "na must be smaller"),
    ],
)
def test_bad_psf_options_name_the_option(spec, match):
    with pytest.raises(InputError, match=match):
        make_psf(spec, (1.0, 1.0, 1.0))
