"""The native kernel (csrc/meshft, compiled just in time into the user cache by
deltamic_core.meshft._build; ``make setup`` prebuilds it): it builds, it is right, and the CUDA
source and the shared math header compile. Also built with clang (its AVX2 clone, no OpenMP:
the serial stand-in), by two processes at once (one builds, the other waits and loads).

References are independent of the kernels: the textbook closed form of the triangle transform
evaluated in 40-digit arithmetic with mpmath (no cancellation at that precision), central finite
differences in float64 for the gradients, and exact identities (area at k = 0, zero
contribution of a degenerate triangle).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc" / "meshft"

if os.environ.get("DELTAMIC_NO_EXT") == "1":
    pytest.skip("built without the native extension (DELTAMIC_NO_EXT=1)", allow_module_level=True)

from deltamic_core import _C  # noqa: E402  (a failed build must fail this test module; builds if needed)

mpmath = pytest.importorskip("mpmath")


# ----------------------------------------------------------------------------------------
# Meshes and references


def _icosphere(subdivisions: int, radius: float, centre) -> tuple[np.ndarray, np.ndarray]:
    """Icosphere (trimesh) scaled and moved."""
    import trimesh

    ico = trimesh.creation.icosphere(subdivisions=subdivisions, radius=1.0)
    verts = np.asarray(ico.vertices, dtype=np.float64) * radius + np.asarray(centre, float)
    return verts, np.asarray(ico.faces, dtype=np.int64)


def _mp_triangle(a, b, c, k):
    """2A * f[pa, pb, pc] in mpmath: Lagrange form of the divided difference of -exp(-iz)."""
    mp = mpmath
    a, b, c, k = ([mp.mpf(float(x)) for x in y] for y in (a, b, c, k))
    u = [b[i] - a[i] for i in range(3)]
    v = [c[i] - a[i] for i in range(3)]
    n = [u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0]]
    two_area = mp.sqrt(sum(x * x for x in n))
    pa, pb, pc = (2 * mp.pi * sum(k[i] * x[i] for i in range(3)) for x in (a, b, c))
    tiny = mp.mpf(10) ** -25
    if abs(pa - pb) < tiny and abs(pa - pc) < tiny:
        return two_area * mp.expj(-pa) / 2  # f[z, z, z] = f''(z) / 2
    f = lambda z: -mp.expj(-z)
    dd = f(pa) / ((pa - pb) * (pa - pc)) + f(pb) / ((pb - pa) * (pb - pc)) + f(pc) / ((pc - pa) * (pc - pb))
    return two_area * dd


def _mp_mesh_ft(verts, faces, weights, freqs) -> np.ndarray:
    with mpmath.workdps(40):
        out = []
        for k in freqs:
            s = mpmath.mpc(0)
            for t, (i, j, l) in enumerate(faces):
                s += mpmath.mpf(float(weights[t])) * _mp_triangle(verts[i], verts[j], verts[l], k)
            out.append(complex(s))
    return np.array(out)


def _case(subdivisions=1, radius=3.0, centre=(2.0, -1.0, 4.0), kmax=1.5, n_freq=10, seed=0):
    """float32-representable mesh, weights 1/2 and frequencies (k = 0 first)."""
    rng = np.random.default_rng(seed)
    verts, faces = _icosphere(subdivisions, radius, centre)
    verts = verts.astype(np.float32).astype(np.float64)
    weights = np.ones(len(faces))
    weights[::3] = 2.0
    freqs = rng.uniform(-1, 1, (n_freq, 3)) * kmax / np.sqrt(3)
    freqs[0] = 0.0
    freqs = freqs.astype(np.float32).astype(np.float64)
    return verts, faces, weights, freqs


def _tensors(verts, faces, weights, freqs, dtype):
    return (
        torch.tensor(verts, dtype=dtype),
        torch.tensor(faces, dtype=torch.int64),
        torch.tensor(weights, dtype=dtype),
        torch.tensor(freqs, dtype=dtype),
    )


# ----------------------------------------------------------------------------------------
# Forward


@pytest.mark.parametrize(
    "subdivisions,radius,centre,kmax",
    [
        (1, 3.0, (2.0, -1.0, 4.0), 1.5),  # triangles of ~1 um: mostly the series regime
        (0, 6.0, (1.0, 1.0, -1.0), 4.0),  # 6 um edges at 4 cycles/um: the recursive regime
        (0, 0.05, (9.0, 0.0, 0.0), 4.0),
    ],  # 0.05 um triangles 9 um from the origin
)
def test_forward_matches_mpmath(subdivisions, radius, centre, kmax):
    verts, faces, weights, freqs = _case(subdivisions, radius, centre, kmax)
    ref = _mp_mesh_ft(verts, faces, weights, freqs)
    u0 = abs(ref[0])
    out64 = _C.meshft_forward(*_tensors(verts, faces, weights, freqs, torch.float64))
    out32 = _C.meshft_forward(*_tensors(verts, faces, weights, freqs, torch.float32))
    assert out64.dtype == torch.complex128 and out32.dtype == torch.complex64
    assert np.abs(out64.numpy() - ref).max() <= 1e-12 * u0
    assert np.abs(out32.numpy().astype(np.complex128) - ref).max() <= 3e-7 * u0


_CLONE_SCRIPT = (
    "import json, numpy as np, torch\n"
    "from deltamic_core import _C\n"
    "d = np.load({case!r})\n"
    "res = {{'isa': np.array(_C.cpu_isa())}}\n"
    "for dt in (torch.float32, torch.float64):\n"
    "    t = [torch.tensor(d[n], dtype=dt) for n in ('verts', 'weights', 'freqs')]\n"
    "    f = torch.tensor(d['faces'])\n"
    "    G = torch.complex(torch.tensor(d['g'][:, 0], dtype=dt), torch.tensor(d['g'][:, 1], dtype=dt))\n"
    "    name = str(dt).split('.')[-1]\n"
    "    res['u_' + name] = _C.meshft_forward(t[0], f, t[1], t[2]).numpy()\n"
    "    res['gv_' + name] = _C.meshft_backward(t[0], f, t[1], t[2], G)[0].numpy()\n"
    "np.savez({out!r}, **res)\n"
)


def _clone_case(tmp_path):
    verts, faces, weights, freqs = _case(1, 3.0, (2.0, -1.0, 4.0), 2.5, n_freq=40, seed=3)
    ref = _mp_mesh_ft(verts, faces, weights, freqs)
    g = np.random.default_rng(4).normal(size=(len(freqs), 2)).astype(np.float32)
    np.savez(tmp_path / "case.npz", verts=verts, faces=faces, weights=weights, freqs=freqs, g=g)
    return (verts, faces, weights, freqs, g), ref


def _check_other_build(out, case, ref):
    """A kernel from another process (other clone or compiler) against mpmath and this build."""
    verts, faces, weights, freqs, g = case
    u0 = abs(ref[0])
    assert np.abs(out["u_float64"] - ref).max() <= 1e-12 * u0
    assert np.abs(out["u_float32"].astype(np.complex128) - ref).max() <= 3e-7 * u0
    # gradients: the other build's float64 and float32 against this process's float64
    G = torch.complex(torch.tensor(g[:, 0], dtype=torch.float64), torch.tensor(g[:, 1], dtype=torch.float64))
    gv = _C.meshft_backward(*_tensors(verts, faces, weights, freqs, torch.float64), G)[0].numpy()
    rel = lambda a: np.linalg.norm(a - gv) / np.linalg.norm(gv)
    assert rel(out["gv_float64"]) <= 1e-12
    assert rel(out["gv_float32"].astype(np.float64)) <= 1e-4


def test_portable_clone_meets_the_same_contracts(tmp_path):
    """The kernels are compiled twice (AVX2+FMA, chosen at run time when the CPU has it, and
    baseline x86-64); DELTAMIC_MESHFT_ISA=baseline forces the second, in a fresh process. Both
    must meet the float32 and float64 contracts against the mpmath reference and agree on the
    gradients."""
    case, ref = _clone_case(tmp_path)
    code = _CLONE_SCRIPT.format(case=str(tmp_path / "case.npz"), out=str(tmp_path / "out.npz"))
    env = dict(os.environ, DELTAMIC_MESHFT_ISA="baseline")
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=300)
    out = np.load(tmp_path / "out.npz")
    assert str(out["isa"]) == "baseline"
    _check_other_build(out, case, ref)


def _cpu_has_avx2_fma() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx2" in flags and "fma" in flags


@pytest.mark.slow
def test_clang_build_without_openmp_two_processes_at_once(tmp_path):
    """A first use by two processes at once, with clang and OpenMP switched off (the serial
    stand-in for <omp.h>, as on a Mac without libomp), into an empty cache: exactly one
    compiles, the other waits on the lock and loads that build; both meet the contracts, and
    clang's AVX2+FMA clone is the one that runs on a CPU that has them."""
    clang = shutil.which("clang++")
    if clang is None:
        pytest.skip("clang++ not installed (apt-get install clang)")
    case, ref = _clone_case(tmp_path)
    env = dict(os.environ, CXX=clang, DELTAMIC_OPENMP="0", DELTAMIC_KERNEL_CACHE=str(tmp_path / "cache"))
    env.pop("DELTAMIC_NO_EXT", None)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-W",
                "always",
                "-c",
                _CLONE_SCRIPT.format(case=str(tmp_path / "case.npz"), out=str(tmp_path / f"out{i}.npz")),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    results = [p.communicate(timeout=1800) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-4000:]
    notices = sum(err.count("preparing its fast CPU kernel") for _, err in results)
    assert notices == 1, [err[-2000:] for _, err in results]
    (ok,) = (tmp_path / "cache").glob("meshft-*/build-ok.json")
    info = json.loads(ok.read_text())
    assert info["compiler"][0] == "clang" and info["openmp"] is False
    assert "-fno-trapping-math" in info["cflags"] and "-fopenmp" not in info["cflags"]
    for i in range(2):
        out = np.load(tmp_path / f"out{i}.npz")
        assert str(out["isa"]) == ("avx2+fma" if _cpu_has_avx2_fma() else "baseline")
        _check_other_build(out, case, ref)


def test_forward_at_zero_frequency_is_weighted_area():
    verts, faces, weights, _ = _case(2, 5.0)
    tri = verts[faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    out = _C.meshft_forward(*_tensors(verts, faces, weights, np.zeros((1, 3)), torch.float64))
    assert abs(out[0].item() - float(weights @ area)) <= 1e-13 * float(weights @ area)


def test_degenerate_triangle_contributes_nothing_and_gets_zero_gradient():
    verts, faces, weights, freqs = _case(1, 3.0)
    V = len(verts)
    # a collinear triangle and a triangle with a repeated vertex, on private vertices
    extra = np.array([[1.0, 2.0, 3.0], [1.5, 2.5, 3.5], [2.0, 3.0, 4.0]])
    verts2 = np.vstack([verts, extra])
    faces2 = np.vstack([faces, [[V, V + 1, V + 2], [V, V, V + 1]]])
    weights2 = np.concatenate([weights, [1.0, 1.0]])
    t = _tensors(verts2, faces2, weights2, freqs, torch.float64)
    out = _C.meshft_forward(*t)
    base = _C.meshft_forward(*_tensors(verts, faces, weights, freqs, torch.float64))
    assert torch.equal(out, base)
    gv, gw = _C.meshft_backward(*t, torch.randn(len(freqs), dtype=torch.complex128))
    assert torch.isfinite(gv).all() and torch.isfinite(gw).all()
    assert torch.equal(gv[V:], torch.zeros(3, 3, dtype=torch.float64))
    assert torch.equal(gw[-2:], torch.zeros(2, dtype=torch.float64))


def test_results_do_not_depend_on_thread_count():
    verts, faces, weights, freqs = _case(2, 4.0, n_freq=200)
    t = _tensors(verts, faces, weights, freqs, torch.float32)
    g = torch.randn(len(freqs), dtype=torch.complex64)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        f1, b1 = _C.meshft_forward(*t), _C.meshft_backward(*t, g)
        torch.set_num_threads(2)
        f2, b2 = _C.meshft_forward(*t), _C.meshft_backward(*t, g)
    finally:
        torch.set_num_threads(n)
    assert torch.equal(f1, f2)
    assert torch.equal(b1[0], b2[0]) and torch.equal(b1[1], b2[1])


# ----------------------------------------------------------------------------------------
# Backward


def _loss(t, g):
    return float((g.conj() * _C.meshft_forward(*t)).real.sum())


@pytest.mark.parametrize("subdivisions,radius,kmax", [(1, 3.0, 1.5), (0, 6.0, 4.0), (2, 0.3, 4.0)])
def test_backward_matches_finite_differences(subdivisions, radius, kmax):
    verts, faces, weights, freqs = _case(subdivisions, radius, kmax=kmax, n_freq=40)
    v, f, w, k = _tensors(verts, faces, weights, freqs, torch.float64)
    gen = torch.Generator().manual_seed(3)
    g = torch.randn(len(freqs), dtype=torch.complex128, generator=gen)
    gv, gw = _C.meshft_backward(v, f, w, k, g)
    h = 1e-6 * radius
    for _ in range(3):
        dv = torch.randn(v.shape, dtype=torch.float64, generator=gen)
        fd = (_loss((v + h * dv, f, w, k), g) - _loss((v - h * dv, f, w, k), g)) / (2 * h)
        assert abs(fd - float((gv * dv).sum())) <= 1e-6 * abs(fd) + 1e-9 * float(gv.norm())
    dw = torch.randn(w.shape, dtype=torch.float64, generator=gen)
    # U is linear in the weights: the difference quotient is exact up to rounding
    fd = (_loss((v, f, w + dw, k), g) - _loss((v, f, w - dw, k), g)) / 2
    assert abs(fd - float((gw * dw).sum())) <= 1e-10 * abs(fd)


@pytest.mark.parametrize("subdivisions,radius,kmax", [(3, 9.0, 4.0), (2, 0.2, 4.0), (4, 5.0, 0.5)])
def test_float32_gradient_close_to_float64(subdivisions, radius, kmax):
    verts, faces, weights, freqs = _case(subdivisions, radius, (0.5, 0.0, 0.0), kmax, n_freq=150)
    g = torch.randn(len(freqs), dtype=torch.complex128, generator=torch.Generator().manual_seed(5))
    gv64, gw64 = _C.meshft_backward(*_tensors(verts, faces, weights, freqs, torch.float64), g)
    gv32, gw32 = _C.meshft_backward(*_tensors(verts, faces, weights, freqs, torch.float32), g.to(torch.complex64))
    assert gv32.dtype == torch.float32 and gw32.dtype == torch.float32
    assert float((gv32.double() - gv64).norm() / gv64.norm()) < 1e-5
    assert float((gw32.double() - gw64).norm() / gw64.norm()) < 1e-5


def test_matches_torch_backend_when_available():
    from deltamic_core import meshft

    verts, faces, weights, freqs = _case(2, 4.0, kmax=2.0, n_freq=64)
    v, f, w, k = _tensors(verts, faces, weights, freqs, torch.float64)
    ref = meshft.mesh_ft(v, f, k, w, backend="torch")
    out = _C.meshft_forward(v, f, w, k)
    assert float((out - ref).abs().max()) <= 1e-10 * float(ref.abs().max())


# ----------------------------------------------------------------------------------------
# Validation


def test_bad_arguments_raise_errors_naming_the_argument():
    v, f, w, k = _tensors(*_case(0, 1.0), torch.float32)
    with pytest.raises(TypeError, match="weights"):
        _C.meshft_forward(v, f, w.double(), k)
    with pytest.raises(TypeError, match="faces"):
        _C.meshft_forward(v, f.int(), w, k)
    with pytest.raises(ValueError, match="freqs"):
        _C.meshft_forward(v, f, w, k[:, :2])
    with pytest.raises(ValueError, match="verts must be contiguous"):
        _C.meshft_forward(v.t().contiguous().t(), f, w, k)
    with pytest.raises(ValueError, match="faces index out of range"):
        _C.meshft_forward(v, f + 100, w, k)
    with pytest.raises(ValueError, match="weights must have one entry per face"):
        _C.meshft_forward(v, f, w[1:], k)
    with pytest.raises(TypeError, match="grad_out"):
        _C.meshft_backward(v, f, w, k, torch.zeros(len(k), dtype=torch.complex128))


def test_empty_frequency_set_gives_empty_result():
    v, f, w, _ = _tensors(*_case(0, 1.0), torch.float64)
    k = torch.zeros((0, 3), dtype=torch.float64)
    assert _C.meshft_forward(v, f, w, k).shape == (0,)
    gv, gw = _C.meshft_backward(v, f, w, k, torch.zeros(0, dtype=torch.complex128))
    assert torch.equal(gv, torch.zeros_like(v)) and torch.equal(gw, torch.zeros_like(w))


# ----------------------------------------------------------------------------------------
# Compilation of the shared header (host only) and of the CUDA source


def test_math_header_compiles_host_only_without_warnings(tmp_path):
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    src = tmp_path / "tu.cpp"
    src.write_text(
        '#include "meshft_math.h"\n'
        "template <typename T> T probe(T p, T q) {\n"
        "  meshft::Cplx<T> e{T(1), T(0)}, f0, fa, fb, fc;\n"
        "  meshft::tri_f_grad<T>(p, q, e, e, e, f0, fa, fb, fc);\n"
        "  return meshft::tri_f<T>(p, q, e, e, e).re + f0.im + fa.re + fb.im + fc.re;\n"
        "}\n"
        "int main() { return probe(0.1f, 0.2f) + probe(3.0, 4.0) > 100.0 ? 1 : 0; }\n"
    )
    res = subprocess.run(
        [cxx, "-std=c++17", "-Wall", "-Wextra", "-Werror", "-O2", f"-I{CSRC}", str(src), "-o", str(tmp_path / "tu")],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr


def _nvcc():
    for cand in (shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if cand and Path(cand).exists():
            return cand
    return None


@pytest.mark.slow
def test_cuda_source_compiles(tmp_path):
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found")
    from torch.utils.cpp_extension import include_paths

    cmd = [
        nvcc,
        "-c",
        str(CSRC / "meshft_cuda.cu"),
        "-o",
        str(tmp_path / "meshft_cuda.o"),
        "-std=c++17",
        "-DWITH_CUDA",
        "-O2",
        "-arch=sm_80",
        f"-I{CSRC}",
        f"-I{Path(sys.prefix) / 'include'}",
        "-Xcompiler",
        "-fPIC",
        "-DTORCH_EXTENSION_NAME=_C",
        "-D_GLIBCXX_USE_CXX11_ABI=1",
    ]
    for p in include_paths():
        cmd.append(f"-I{p}")
    import sysconfig

    cmd.append(f"-I{sysconfig.get_paths()['include']}")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
