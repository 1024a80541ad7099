"""How the native kernel is built on the user's machine (deltamic_core.meshft._build): the
flags each compiler kind gets, compiler detection, the fallback where no compiler works
("auto" takes nufft and says so once), and the cache key. The compiled kernel's numbers are
tested in test_native_build.py (GCC, the set-up's build, and clang)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from deltamic_core.meshft import _build


def _gnu_style(flags):
    return [f for f in flags if f.startswith("-")]


@pytest.mark.parametrize("kind", ["gcc", "clang", "apple-clang"])
def test_gnu_style_compilers_get_optimised_portable_flags(kind):
    cflags, ldflags = _build.base_flags(kind)
    assert {"-O3", "-g0", "-fno-trapping-math", "-std=c++17"} <= set(cflags)
    # nothing that pins the build to the build machine's CPU: the AVX2 clone is chosen at run time
    assert not [f for f in cflags if f.startswith(("-march", "-mavx", "-mtune", "-ffast-math"))]
    assert "-fopenmp" not in cflags + ldflags  # OpenMP only after a probe says it works


def test_msvc_gets_msvc_flags_only():
    cflags, ldflags = _build.base_flags("msvc")
    assert cflags == ["/O2"] and ldflags == []
    assert _build.openmp_candidates("msvc") == [(["/openmp"], [])]


def test_openmp_candidates_per_compiler(tmp_path, monkeypatch):
    assert _build.openmp_candidates("gcc") == [(["-fopenmp"], ["-fopenmp"])]
    assert _build.openmp_candidates("clang") == [(["-fopenmp"], ["-fopenmp"])]
    # Apple clang: libomp only where one is installed, else nothing (a serial build)
    monkeypatch.setattr(_build, "_libomp_prefixes", lambda: [tmp_path / "nowhere"])
    assert _build.openmp_candidates("apple-clang") == []
    (tmp_path / "omp" / "include").mkdir(parents=True)
    (tmp_path / "omp" / "lib").mkdir()
    (tmp_path / "omp" / "include" / "omp.h").write_text("")
    (tmp_path / "omp" / "lib" / "libomp.dylib").write_text("")
    monkeypatch.setattr(_build, "_libomp_prefixes", lambda: [tmp_path / "nowhere", tmp_path / "omp"])
    ((cflags, ldflags),) = _build.openmp_candidates("apple-clang")
    assert cflags[:2] == ["-Xpreprocessor", "-fopenmp"] and f"-I{tmp_path / 'omp' / 'include'}" in cflags
    assert "-lomp" in ldflags and f"-L{tmp_path / 'omp' / 'lib'}" in ldflags


def test_openmp_can_be_switched_off(monkeypatch):
    tc = _build.Toolchain("gcc", "g++")
    monkeypatch.setenv("DELTAMIC_OPENMP", "0")
    assert _build.select_openmp(tc) is None


@pytest.mark.parametrize("cxx,kind", [("g++", "gcc"), ("clang++", "clang")])
def test_detects_the_compiler_kind(monkeypatch, cxx, kind):
    if shutil.which(cxx) is None:
        pytest.skip(f"{cxx} not installed")
    monkeypatch.setenv("CXX", cxx)
    tc = _build.detect_toolchain()
    assert tc is not None and tc.kind == kind and tc.version
    # the OpenMP probe really compiles and links (gcc ships libgomp; clang needs libomp-dev)
    if kind == "gcc":
        assert _build.select_openmp(tc) == (["-fopenmp"], ["-fopenmp"])


def _fake_compiler(tmp_path: Path) -> Path:
    d = tmp_path / "bin"
    d.mkdir()
    for name in ("c++", "g++", "clang++"):
        (d / name).write_text("#!/bin/sh\nexit 1\n")
        (d / name).chmod(0o755)
    return d


def test_a_failing_compiler_is_no_compiler(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", str(_fake_compiler(tmp_path) / "c++"))
    assert _build.detect_toolchain() is None


def test_cache_key_changes_with_sources_and_compiler(tmp_path, monkeypatch):
    monkeypatch.setenv("DELTAMIC_KERNEL_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "src"
    shutil.copytree(_build.source_dir(), src)
    monkeypatch.setattr(_build, "source_dir", lambda: src)
    p1 = _build.plan()
    assert p1.directory.parent == tmp_path / "cache"
    assert _build.plan().key == p1.key  # deterministic
    with open(src / "meshft_math.h", "a") as f:
        f.write("\n// edited\n")
    assert _build.plan().key != p1.key  # a header edit rebuilds (headers are part of the key)
    monkeypatch.setenv("CXX", str(_fake_compiler(tmp_path) / "c++"))
    assert _build.plan().key != p1.key


FALLBACK = r"""
import json, warnings
import numpy as np
from deltamic_core import GaussianPSF, available_backends
from deltamic_core.geometry import seed_spheres
from deltamic_core.render import Renderer
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    mesh = seed_spheres([[3.0, 3.0, 3.0]], [1.5], subdivisions=2)
    r = Renderer((12, 12, 12), (0.5, 0.5, 0.5), GaussianPSF(sigma_um=(0.5, 0.5, 0.5)), route="fourier")
    import torch
    v = torch.tensor(mesh.verts, dtype=torch.float32)
    f = torch.tensor(mesh.faces)
    img1 = r.render(v, f)
    img2 = r.render(v, f)
print(json.dumps({"backends": available_backends(), "used": r.backend_name,
                  "messages": [str(x.message) for x in w], "sum": float(img1.sum())}))
"""


def test_without_compiler_auto_uses_nufft_and_says_so_once(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DELTAMIC_NO_EXT",)}
    env.update(CXX=str(_fake_compiler(tmp_path) / "c++"), DELTAMIC_KERNEL_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-c", FALLBACK], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["used"] == "nufft"
    assert "cpu" not in out["backends"] and "nufft" in out["backends"]
    notes = [m for m in out["messages"] if "fast exact kernel is not available" in m]
    assert len(notes) == 1, out["messages"]
    assert "no working C++ compiler" in notes[0] and "NUFFT" in notes[0]
    assert "pip install" not in notes[0] and "-e ." not in notes[0]
    # the image is the pure-torch exact image up to the NUFFT tolerance
    exact = subprocess.run(
        [sys.executable, "-c", FALLBACK.replace('route="fourier")', 'route="fourier", backend="torch")')],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert exact.returncode == 0, exact.stderr[-3000:]
    ref = json.loads(exact.stdout.strip().splitlines()[-1])
    assert ref["used"] == "torch"
    assert abs(out["sum"] - ref["sum"]) <= 1e-3 * abs(ref["sum"])


def test_build_kernel_command_without_compiler_explains_and_exits_cleanly(tmp_path):
    env = dict(os.environ, CXX=str(_fake_compiler(tmp_path) / "c++"), DELTAMIC_KERNEL_CACHE=str(tmp_path / "c"))
    env.pop("DELTAMIC_NO_EXT", None)
    ok = subprocess.run(
        [sys.executable, "-m", "deltamic_core.build_kernel"], capture_output=True, text=True, env=env, timeout=300
    )
    assert ok.returncode == 0 and "no working C++ compiler" in ok.stderr and "Traceback" not in ok.stderr
    req = subprocess.run(
        [sys.executable, "-m", "deltamic_core.build_kernel", "--require"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert req.returncode == 1 and "Traceback" not in req.stderr


def test_a_failed_compilation_is_remembered_and_not_retried(tmp_path):
    """A compiler that identifies itself but cannot compile (a broken toolchain): the first use
    tries once, says so, falls back to nufft; the failure is recorded in the cache, so the next
    process neither retries nor announces a build."""
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ not installed")
    broken = tmp_path / "broken-c++"
    broken.write_text(
        textwrap.dedent(f"""\
        #!/bin/sh
        # answers the identification query like g++, fails everything else
        case " $* " in *" -dM "*|*" --version "*) exec {gxx} "$@" ;; esac
        echo "broken-c++: internal compiler error" >&2
        exit 1
        """)
    )
    broken.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "DELTAMIC_NO_EXT"}
    env.update(CXX=str(broken), DELTAMIC_KERNEL_CACHE=str(tmp_path / "cache"))
    runs = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", FALLBACK], capture_output=True, text=True, env=env, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    for i, out in enumerate(runs):
        assert out["used"] == "nufft"
        building = [m for m in out["messages"] if "preparing its fast CPU kernel" in m]
        assert len(building) == (1 if i == 0 else 0), out["messages"]
        notes = [m for m in out["messages"] if "fast exact kernel is not available" in m]
        assert len(notes) == 1 and "failed to build it" in notes[0], out["messages"]
    (marker,) = (tmp_path / "cache").glob("meshft-*/build-failed.json")
    rec = json.loads(marker.read_text())
    assert "failed to build it" in rec["reason"] and "internal compiler error" in rec["log"]


WARM_UP = r"""
import json, sys
from deltamic_core.meshft import _native
from deltamic_core.pipeline import warm_up
warm_up()
print(json.dumps({"state": _native.state(), "loaded": [m for m in ("trimesh", "finufft") if m in sys.modules]}))
"""


def test_warm_up_never_compiles_the_kernel(tmp_path):
    # pipeline.warm_up (run by the napari widget when it opens) loads an already-built kernel
    # only: with an empty kernel cache it leaves the kernel unbuilt, and still imports the rest
    env = {k: v for k, v in os.environ.items() if k not in ("DELTAMIC_NO_EXT",)}
    env["DELTAMIC_KERNEL_CACHE"] = str(tmp_path / "cache")
    proc = subprocess.run([sys.executable, "-c", WARM_UP], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["state"] in ("buildable", "unavailable"), out
    assert not list(tmp_path.glob("cache/meshft-*/*.so"))
    assert "finufft" in out["loaded"]  # (a seeded fit no longer needs trimesh: c76f3a7)
    assert "preparing its fast CPU kernel" not in proc.stderr
