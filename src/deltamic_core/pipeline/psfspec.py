"""The PSF of a fit as plain data (:class:`PSFSpec`) and the one place that builds a model from it.

A spec is a model name plus its parameters in the core's names and units (micrometres).
:data:`PSF_BUILDERS` maps each model name to a function ``(params, spacing_um) -> PSFModel``;
a new model is one :func:`register_psf` decorator. The command line and the napari widget
both fill a :class:`PSFSpec` and call :func:`make_psf`, so they build the same model.

Parameter names (shared by every model that has them):

``sigma_um``       Gaussian standard deviations (z, y, x); default one voxel per axis
``na``             numerical aperture
``wavelength_um``  emission wavelength in vacuum
``n_immersion``    refractive index of the immersion medium
``n_sample``       refractive index of the sample (Gibson-Lanni)
``depth_um``       depth of the focal plane below the coverslip (Gibson-Lanni)
``zernike``        pupil aberrations {Noll index: waves} (Hanser)
``ex_wavelength_um`` excitation wavelength in vacuum (confocal; default: the emission wavelength)
``pinhole_au``     pinhole diameter in Airy units of the emission (confocal; default 1)
``vectorial``      the vectorial model instead of the scalar one (Gibson-Lanni; default False)
``bead``           path of a bead image (measured)
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError

#: the command-line option of each parameter (messages name what the user can change)
OPTION = {
    "sigma_um": "--sigma",
    "na": "--na",
    "wavelength_um": "--wavelength",
    "n_immersion": "--ni",
    "n_sample": "--ns",
    "depth_um": "--depth",
    "zernike": "--zernike",
    "ex_wavelength_um": "--ex-wavelength",
    "pinhole_au": "--pinhole-au",
    "vectorial": "--vectorial",
    "bead": "--psf measured BEAD.tif",
}


@dataclass(frozen=True)
class PSFSpec:
    """A PSF model by name and parameters (picklable; see the module docstring for names)."""

    model: str = "gaussian"
    params: dict = field(default_factory=dict)
    learn: bool = False  # refine the model's parameters during the fit

    def set_params(self) -> dict:
        """The parameters that were given (None means 'not given')."""
        return {k: v for k, v in self.params.items() if v is not None}


#: model name -> (builder, accepted parameter names)
PSF_BUILDERS: dict[str, tuple[Callable, frozenset]] = {}


def register_psf(name: str, params: tuple[str, ...]):
    """Register ``builder(params: dict, spacing_um) -> PSFModel`` as the model ``name``."""

    def deco(builder):
        PSF_BUILDERS[name] = (builder, frozenset(params))
        return builder

    return deco


def psf_models() -> tuple[str, ...]:
    return tuple(PSF_BUILDERS)


def make_psf(spec: PSFSpec, spacing_um):
    """The PSF model of ``spec`` for an image of voxel size ``spacing_um`` (z, y, x)."""
    if spec.model not in PSF_BUILDERS:
        raise InputError(f"unknown PSF model {spec.model!r}; choose from {', '.join(PSF_BUILDERS)}")
    builder, accepted = PSF_BUILDERS[spec.model]
    given = spec.set_params()
    for k in given:
        if k not in accepted:
            owners = [m for m, (_, acc) in PSF_BUILDERS.items() if k in acc]
            where = f"--psf {' or '.join(owners)}" if owners else "no PSF model"
            raise InputError(f"{OPTION.get(k, k)} applies to {where}, not --psf {spec.model}")
    try:
        return builder(given, tuple(float(s) for s in spacing_um))
    except InputError:
        raise
    except (ValueError, TypeError) as exc:
        raise InputError(f"--psf {spec.model}: {exc}") from None


def _require(params: dict, model: str, names) -> None:
    missing = [OPTION[n] for n in names if params.get(n) is None]
    if missing:
        raise InputError(f"--psf {model} needs {' '.join(missing)}")


@register_psf("gaussian", ("sigma_um", "na", "wavelength_um", "n_immersion"))
def _gaussian(p: dict, spacing_um):
    """Default: sigma = 1 voxel on each axis.

    A stack sampled at the Nyquist rate of its optics has voxels about one PSF standard
    deviation wide on every axis (pixel ~ FWHM / 2.3 ~ sigma), which is how confocal and
    light-sheet membrane stacks are normally acquired; a narrower Gaussian would be
    under-sampled by the voxel grid (its rendered image aliases), a wider one blurs the
    membranes more than the data do. With the optics (na, wavelength, immersion index) the
    physical Gaussian is used instead.
    """
    from ..psf import GaussianPSF

    if "sigma_um" in p:
        sig = tuple(float(s) for s in p["sigma_um"])
        if len(sig) not in (1, 3):
            raise InputError(f"--sigma takes 1 or 3 values (z y x) in um, got {len(sig)}")
        return GaussianPSF(sigma_um=sig * (3 if len(sig) == 1 else 1))
    if any(k in p for k in ("na", "wavelength_um", "n_immersion")):
        if not all(k in p for k in ("na", "wavelength_um", "n_immersion")):
            raise InputError("a Gaussian from optics needs --na, --wavelength and --ni (or give --sigma)")
        return GaussianPSF.from_optics(p["na"], p["wavelength_um"], p["n_immersion"])
    return GaussianPSF(sigma_um=tuple(spacing_um))


@register_psf("gibson-lanni", ("na", "wavelength_um", "n_immersion", "n_sample", "depth_um", "vectorial"))
def _gibson_lanni(p: dict, spacing_um):
    from ..psf import GibsonLanniPSF

    _require(p, "gibson-lanni", ("na", "wavelength_um", "n_immersion", "n_sample"))
    # the immersion medium is taken to be the one the objective was designed for
    kw = dict(
        na=p["na"],
        wavelength_um=p["wavelength_um"],
        n_immersion=p["n_immersion"],
        n_immersion_design=p["n_immersion"],
        n_sample=p["n_sample"],
    )
    if "depth_um" in p:
        kw["particle_depth_um"] = p["depth_um"]
    if p.get("vectorial"):
        kw["vectorial"] = True
    return GibsonLanniPSF(**kw)


@register_psf(
    "confocal", ("na", "wavelength_um", "ex_wavelength_um", "pinhole_au", "n_immersion", "n_sample", "depth_um")
)
def _confocal(p: dict, spacing_um):
    """Point-scanning confocal: excitation x emission through a pinhole (``ConfocalPSF``).

    The sample index defaults to the immersion index (index-matched), the excitation
    wavelength to the emission wavelength and the pinhole to 1 Airy unit."""
    from ..psf import ConfocalPSF

    _require(p, "confocal", ("na", "wavelength_um", "n_immersion"))
    ni = p["n_immersion"]
    kw = dict(
        na=p["na"],
        wavelength_um=p["wavelength_um"],
        ex_wavelength_um=p.get("ex_wavelength_um", p["wavelength_um"]),
        pinhole_au=p.get("pinhole_au", 1.0),
        n_immersion=ni,
        n_immersion_design=ni,
        n_sample=p.get("n_sample", ni),
    )
    if "depth_um" in p:
        kw["particle_depth_um"] = p["depth_um"]
    return ConfocalPSF(**kw)


@register_psf("measured", ("bead",))
def _measured(p: dict, spacing_um):
    """A bead stack (``MeasuredPSF.from_bead_image``); its voxel size comes from the bead file's
    metadata, else it is taken to be the image's."""
    from ..io import read_image
    from ..psf import MeasuredPSF

    if "bead" not in p:
        raise InputError("--psf measured needs the bead image: --psf measured BEAD.tif")
    path = Path(p["bead"])
    if not path.is_file():
        raise InputError(f"--psf measured: bead image {str(path)!r} not found")
    try:
        bead, meta = read_image(path)
    except (OSError, ValueError) as exc:
        raise InputError(f"--psf measured: bead image {str(path)!r} cannot be read ({exc})") from None
    if bead.ndim != 3:
        raise InputError(f"--psf measured: bead image {str(path)!r} must be one 3D stack (Z, Y, X), got {bead.shape}")
    source = getattr(meta, "spacing_source", "file")
    spacing = tuple(meta.spacing_um) if source not in ("default", None) else tuple(spacing_um)
    try:
        return MeasuredPSF.from_bead_image(bead, spacing)
    except ValueError as exc:
        raise InputError(f"--psf measured: bead image {str(path)!r}: {exc}") from None


@register_psf("hanser", ("na", "wavelength_um", "n_immersion", "zernike"))
def _hanser(p: dict, spacing_um):
    from ..psf import HanserPSF

    _require(p, "hanser", ("na", "wavelength_um", "n_immersion"))
    zern = parse_zernike(p["zernike"]) if "zernike" in p else None
    return HanserPSF(na=p["na"], wavelength_um=p["wavelength_um"], n_immersion=p["n_immersion"], zernike=zern or None)


def parse_zernike(items) -> dict[int, float]:
    """Zernike coefficients ``NOLL=COEFF`` (waves) -> ``{noll: coeff}``.

    ``items`` is a dict (returned as is, checked), a string (items separated by spaces or
    commas, e.g. ``"4=0.1 11=-0.05"``) or a sequence of such items (the command line's
    ``--zernike 4=0.1 11=-0.05``).
    """
    if isinstance(items, dict):
        pairs = [(k, v, f"{k}={v}") for k, v in items.items()]
    else:
        if isinstance(items, str):
            items = [items]
        tokens = [t for it in items for t in re.split(r"[\s,;]+", str(it).strip()) if t]
        pairs = []
        for t in tokens:
            k, sep, v = t.partition("=")
            if not sep:
                raise InputError(f"--zernike expects NOLL=COEFF items like 11=0.1, got {t!r}")
            pairs.append((k, v, t))
    out: dict[int, float] = {}
    for k, v, text in pairs:
        try:
            noll, coeff = int(k), float(v)
        except (TypeError, ValueError):
            raise InputError(f"--zernike expects NOLL=COEFF items like 11=0.1, got {text!r}") from None
        if noll < 1 or not math.isfinite(coeff):
            raise InputError(f"--zernike {text!r}: Noll index must be >= 1 and the coefficient finite")
        out[noll] = coeff
    return out


def psf_width_um(psf) -> tuple[float, float, float]:
    """Standard deviation (z, y, x) of a PSF model in um: exact for a Gaussian, else about a
    quarter of its half-extent (where the model is negligible, ~4 sigma)."""
    from ..psf import GaussianPSF

    if isinstance(psf, GaussianPSF):
        return tuple(float(v) for v in psf.sigma_um.detach().cpu().reshape(3))
    return tuple(0.25 * float(e) for e in psf.extent_um())
