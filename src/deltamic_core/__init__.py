"""deltamic_core: differentiable rendering of fluorescent triangle meshes and shape inference.

No napari or Qt imports live here. Public names are resolved lazily so that ``import
deltamic_core`` stays cheap (the napari plugin imports it at start-up).
"""

from __future__ import annotations

import importlib

from ._version import __version__

# public name -> module that defines it (one concept, one place)
_EXPORTS = {
    # mesh Fourier transform
    "mesh_ft": "deltamic_core.meshft",
    "available_backends": "deltamic_core.meshft",
    # grid
    "FFTGrid": "deltamic_core.grid",
    # PSF / OTF models
    "PSFModel": "deltamic_core.psf",
    "GaussianPSF": "deltamic_core.psf",
    "GibsonLanniPSF": "deltamic_core.psf",
    "HanserPSF": "deltamic_core.psf",
    "MeasuredPSF": "deltamic_core.psf",
    # renderer
    "Renderer": "deltamic_core.render",
    # shape inference
    "Fitter": "deltamic_core.fit",
    "FitConfig": "deltamic_core.fit",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name == "_C":  # the native kernel, compiled on first use (see deltamic_core.meshft._build)
        return importlib.import_module("deltamic_core.meshft._native").extension()
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'deltamic_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
