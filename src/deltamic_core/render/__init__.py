"""Differentiable microscope image of triangle meshes (contract in DEVELOPERS.md, "render").

:class:`Renderer` is a plan (padded FFT box, narrow band of the OTF, OTF cache) built once per
image geometry and PSF and executed every iteration.
"""

from __future__ import annotations

from .plan import PaddedBox, fast_length, padded_box
from .renderer import Renderer

__all__ = ["Renderer", "PaddedBox", "padded_box", "fast_length"]
