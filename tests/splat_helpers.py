"""Shared set-up of the real-space splat tests (test_render_realspace.py, test_render_lowrank.py):
meshes, the cases that exercise the native kernel's two scatter paths, the native-vs-torch run
and the run of the portable (baseline x86-64) clone in a fresh process."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import trimesh

from deltamic_core.render import Renderer

# a sphere sticking out of a small image on several sides (clipped windows, skipped points; each
# face's points go through its local patch) and an icosahedron of 7 um faces in a larger image
# (window boxes beyond the patch limit: the direct scatter)
NATIVE_CASES = {
    "clipped": dict(radius=2.3, sub=2, center=(0.4, -0.9, 1.1), shape=(10, 16, 14), origin=(-2.0, -2.2, -1.3)),
    "big faces": dict(radius=6.5, sub=0, center=(0.0, 0.0, 0.0), shape=(30, 60, 60), origin=(-7.4, -7.4, -7.4)),
}


def sphere(radius, subdivisions, center, dtype=torch.float64):
    m = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    v = torch.tensor(np.asarray(m.vertices) + np.asarray(center), dtype=dtype)
    return v, torch.tensor(np.asarray(m.faces), dtype=torch.int64)


def rel_max(a, b):
    a = a.detach().to(torch.float64)
    b = b.detach().to(torch.float64)
    return float((a - b).abs().max() / b.abs().max())


def splat_with_grads(case, dtype, native, psf, check=None):
    """Image of ``NATIVE_CASES[case]`` on the real route with the native kernel on or off, and
    the gradients of a fixed linear functional of it: (image, d/dverts, d/dweights).
    ``check(renderer)`` runs on the renderer (e.g. to assert which kernel it chose)."""
    from deltamic_core.render import realspace

    c = NATIVE_CASES[case]
    v0, f = sphere(c["radius"], c["sub"], center=c["center"], dtype=dtype)
    w0 = torch.linspace(0.5, 2.0, len(f), dtype=dtype)
    g = torch.sin(torch.arange(math.prod(c["shape"]), dtype=dtype)).reshape(c["shape"])
    # the plan is built with the native kernel available (which kernel a measured PSF gets
    # depends on it); only the render and its backward switch
    r = Renderer(c["shape"], (0.5, 0.25, 0.25), psf, origin_um=c["origin"], route="real", dtype=dtype, margin_um=2.0)
    if check is not None:
        check(r)
    old = realspace.USE_NATIVE
    realspace.USE_NATIVE = native
    try:
        v = v0.clone().requires_grad_(True)
        w = w0.clone().requires_grad_(True)
        img = r.render(v, f, w)
        (img * g).sum().backward()
    finally:
        realspace.USE_NATIVE = old
    return img.detach(), v.grad, w.grad


def assert_portable_clone_agrees(module, func, tmp_path):
    """``module.func(case, torch.float64, True)`` for every case, computed again in a fresh
    process whose native kernel runs its portable clone (DELTAMIC_MESHFT_ISA=baseline): every
    returned tensor agrees to 1e-12."""
    out = tmp_path / "baseline.pt"
    code = (
        "import sys, torch\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        f"import {module} as t\n"
        "from deltamic_core import _C\n"
        "assert _C.cpu_isa() == 'baseline', _C.cpu_isa()\n"
        f"torch.save({{c: t.{func}(c, torch.float64, True) for c in t.NATIVE_CASES}}, {str(out)!r})\n"
    )
    env = dict(os.environ, DELTAMIC_MESHFT_ISA="baseline")
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=600)
    other = torch.load(out)
    here = getattr(sys.modules[module], func)
    for case in NATIVE_CASES:
        for a, b in zip(other[case], here(case, torch.float64, True)):
            assert rel_max(a, b) < 1e-12
