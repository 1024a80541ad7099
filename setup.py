"""Build script for the native mesh Fourier transform (``deltamic_core._C``).

The pure-Python package works without it (pure-torch backend); the extension is an
optimisation. It is compiled by ``pip install --no-build-isolation -e .`` against the torch
that is already installed. CUDA sources are compiled only when ``DELTAMIC_WITH_CUDA=1`` and a
CUDA toolkit is found (``CUDA_HOME``); otherwise the CPU kernels alone are built.
"""
import os
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent
CSRC = HERE / "csrc" / "meshft"


def _extensions():
    if os.environ.get("DELTAMIC_NO_EXT") == "1":
        return [], {}
    try:
        from torch.utils import cpp_extension
    except ImportError:  # torch not installed: build the pure-Python package only
        return [], {}
    cpu_sources = [CSRC / "meshft_cpu.cpp", CSRC / "bindings.cpp"]
    if not all(p.exists() for p in cpu_sources):
        return [], {}
    sources = [str(p.relative_to(HERE)) for p in cpu_sources]
    # -g0: pyenv's CFLAGS carry -g, which makes the .so large and the build slow.
    # -fno-trapping-math: the kernels compute both sides of a select (series or quotient) so
    # that the loops over frequencies vectorise; with trapping math the compiler may not
    # evaluate a division whose result is discarded, and keeps a branch. Values are unchanged
    # (IEEE rounding is not affected; nothing here reads FP exception flags).
    cxx_flags = ["-O3", "-g0", "-fopenmp", "-std=c++17", "-fno-trapping-math"]
    define_macros = []
    extension = cpp_extension.CppExtension
    extra = {"cxx": cxx_flags}
    cuda_src = CSRC / "meshft_cuda.cu"
    if os.environ.get("DELTAMIC_WITH_CUDA") == "1" and cuda_src.exists():
        if cpp_extension.CUDA_HOME is None:
            raise RuntimeError("DELTAMIC_WITH_CUDA=1 but no CUDA toolkit found (set CUDA_HOME)")
        extension = cpp_extension.CUDAExtension
        sources.append(str(cuda_src.relative_to(HERE)))
        define_macros.append(("WITH_CUDA", None))
        extra["nvcc"] = ["-O3", "-std=c++17"]  # no fast-math: accuracy needs IEEE sincos
    ext = extension(
        name="deltamic_core._C",
        sources=sources,
        include_dirs=[str(CSRC)],
        define_macros=define_macros,
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"],
    )
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
