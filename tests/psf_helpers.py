"""PSF models as the PSF tests build them: objectives used with the immersion medium they were
designed for (n_immersion = n_immersion_design = ``n``)."""

from __future__ import annotations


def gibson_lanni(na, wavelength_um, n, n_sample, **kw):
    from deltamic_core.psf import GibsonLanniPSF

    return GibsonLanniPSF(
        na=na, wavelength_um=wavelength_um, n_immersion=n, n_immersion_design=n, n_sample=n_sample, **kw
    )


def confocal(na, wavelength_um, ex_wavelength_um, pinhole_au, n, n_sample, **kw):
    from deltamic_core.psf import ConfocalPSF

    return ConfocalPSF(
        na=na,
        wavelength_um=wavelength_um,
        ex_wavelength_um=ex_wavelength_um,
        pinhole_au=pinhole_au,
        n_immersion=n,
        n_immersion_design=n,
        n_sample=n_sample,
        **kw,
    )
