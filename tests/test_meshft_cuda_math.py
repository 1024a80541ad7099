"""The CUDA kernels' per-element math, executed on the CPU against mpmath.

No GPU is available here, so ``meshft_cuda.cu`` is only compiled (tests/test_native_build.py).
What it computes per (face, frequency) is ``tri_f`` / ``tri_f_grad`` of ``meshft_math.h`` on
phases carried as two T values (``split_phase``) and absolute exponentials rounded to T
(``expmi<T>``); ``_C._tri_f_reference`` runs exactly that, in float64 and float32, on the CPU.
The truth here is the closed-form divided difference of f(z) = -exp(-i z) and its analytic
derivatives with respect to each node, evaluated in mpmath at 400+ bits (it shares nothing with
the library's series and sorted-node recursion).
"""

from __future__ import annotations

import os

import mpmath as mp
import numpy as np
import pytest
import torch

if os.environ.get("DELTAMIC_NO_EXT") == "1":
    pytest.skip("built without the native extension (DELTAMIC_NO_EXT=1)", allow_module_level=True)

# (importorskip("deltamic_core._C") skipped this module whenever no earlier module had built
# the kernel, e.g. in a whole-suite run, where it is collected before test_native_build)
from deltamic_core import _C  # builds if needed; a failed build fails here


def _closed_form(x0, x1, x2):
    """f[x0, x1, x2] and its derivatives d/dx0, d/dx1, d/dx2, f(z) = -exp(-i z), distinct nodes."""
    xs = (x0, x1, x2)

    def f(z):
        return -mp.exp(-1j * z)

    def df(z):
        return 1j * mp.exp(-1j * z)

    val = mp.mpc(0)
    grads = [mp.mpc(0)] * 3
    for j in range(3):
        a, b = xs[(j + 1) % 3], xs[(j + 2) % 3]
        x = xs[j]
        den = (x - a) * (x - b)
        val += f(x) / den
        # d/dx of f(x) / ((x - a)(x - b)) and d/da, d/db of it
        grads[j] += df(x) / den - f(x) * (1 / (x - a) + 1 / (x - b)) / den
        i_a, i_b = (j + 1) % 3, (j + 2) % 3
        grads[i_a] += f(x) / den / (x - a)
        grads[i_b] += f(x) / den / (x - b)
    return val, grads


def _reference(phases: np.ndarray):
    vals = np.empty(len(phases), dtype=np.complex128)
    grads = np.empty((len(phases), 3), dtype=np.complex128)
    for i, (pa, pb, pc) in enumerate(phases):
        nodes = [mp.mpf(float(t)) for t in (pa, pb, pc)]
        gaps = [abs(nodes[0] - nodes[1]), abs(nodes[1] - nodes[2]), abs(nodes[2] - nodes[0])]
        extra = int(3 * max(0.0, -float(mp.log(min(gaps), 2))))
        with mp.workprec(400 + extra):
            v, g = _closed_form(*nodes)
        vals[i] = complex(v)
        grads[i] = [complex(t) for t in g]
    return vals, grads


def _cases(seed: int = 0) -> dict[str, np.ndarray]:
    """Absolute phases (pa, pb, pc) in radians, per regime; pa up to hundreds of radians."""
    rng = np.random.default_rng(seed)
    n = 60

    def with_anchor(rel):
        pa = rng.uniform(-300.0, 300.0, size=(len(rel), 1))
        return np.concatenate([pa, pa + rel], axis=1)

    p_near = rng.uniform(1.0, 4.0, n) * rng.choice([-1, 1], n)
    gap = 10.0 ** rng.uniform(-5, -2, n) * rng.choice([-1, 1], n)
    # spreads 1.5 .. 2.1 (float: the series' upper range, 14 terms; double: the recursion);
    # drawn from a generator of its own so that the other cases stay as they were
    wide = np.random.default_rng(seed + 1).uniform(-2.1, 2.1, (8 * n, 2))
    spread = np.max(np.abs(np.concatenate([wide, wide[:, :1] - wide[:, 1:]], axis=1)), axis=1)
    return {
        "small": with_anchor(rng.uniform(-0.3, 0.3, (n, 2))),
        "series": with_anchor(rng.uniform(-1.0, 1.0, (n, 2))),
        "switch": with_anchor(rng.uniform(0.6, 0.9, (n, 2)) * rng.choice([-1, 1], (n, 2)) * [1, -1]),
        "large": with_anchor(rng.uniform(-8.0, 8.0, (n, 2))),
        "close pair": with_anchor(np.stack([p_near, p_near + gap], axis=1)),
        "close to anchor": with_anchor(np.stack([gap, p_near], axis=1)),
        "very large": with_anchor(rng.uniform(-60.0, 60.0, (n, 2))),
        "wide series": with_anchor(wide[(spread >= 1.5) & (spread < 2.1)][:n]),
    }


CASES = _cases()
REFS = {name: _reference(ph) for name, ph in CASES.items()}

# Error bounds, absolute (|f| <= 1/2, |df/dx| <= 1/6): a few units of T's roundoff, plus the
# rounding of the relative phases themselves (about eps * spread, times |d f / d p| <= 1/6),
# which is inherent in T inputs. Measured (2026-12-01): at most 2.8 units in either precision.
EPS = {torch.float64: 2.0**-53, torch.float32: 2.0**-24}


def _bound(dtype, phases, units: float) -> np.ndarray:
    rel = phases[:, 1:] - phases[:, :1]
    spread = np.max(np.abs(np.concatenate([rel, rel[:, :1] - rel[:, 1:]], axis=1)), axis=1)
    return EPS[dtype] * (units + spread / 6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", list(CASES))
def test_tri_f_and_tri_f_grad_match_mpmath(case, dtype):
    phases = CASES[case]
    ref_f, ref_g = REFS[case]
    f, g = _C._tri_f_reference(torch.from_numpy(phases), dtype == torch.float64)
    f, g = f.numpy(), g.numpy()
    # the forward entry point and the backward's F0 agree with the closed form ...
    bound = _bound(dtype, phases, 4.0)
    assert np.all(np.abs(f - ref_f) <= bound), f"tri_f: worst {np.max(np.abs(f - ref_f) / bound):.2f} x bound"
    assert np.all(np.abs(g[:, 0] - ref_f) <= bound), "tri_f_grad's F0"
    # ... and so do the three corner derivatives (the third from translation invariance)
    gbound = _bound(dtype, phases, 4.0)[:, None]
    err = np.abs(g[:, 1:] - ref_g)
    assert np.all(err <= gbound), f"tri_f_grad corners: worst {np.max(err / gbound):.2f} x bound"


def test_reference_derivatives_are_derivatives():
    """The analytic node derivatives of the closed form against mpmath's numerical derivative."""
    pa, pb, pc = (mp.mpf(x) for x in (0.3, 1.9, -2.2))
    with mp.workprec(300):
        _, g = _closed_form(pa, pb, pc)
        num = mp.diff(lambda x: _closed_form(x, pb, pc)[0], pa)
        assert abs(g[0] - num) < mp.mpf(10) ** -60
        # translation invariance: the derivatives sum to d/dt f[x + t] = -i f[x]
        v, _ = _closed_form(pa, pb, pc)
        assert abs(sum(g) - (-1j) * v) < mp.mpf(10) ** -60
