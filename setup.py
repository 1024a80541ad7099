"""Packaging hook: the wheel is pure Python and carries the native kernel's C++ sources.

``csrc/meshft`` (every .cpp/.h/.cu) is copied into the package as ``deltamic_core/_csrc/meshft``
so that an installed wheel can compile the kernel on first use against the user's torch
(``deltamic_core.meshft._build``). Nothing is compiled here, and nothing here needs torch.
"""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).parent
CSRC = HERE / "csrc" / "meshft"
KERNEL_SUFFIXES = (".cpp", ".h", ".cu", ".cuh")


class build_py_with_kernel_sources(build_py):
    def run(self):
        super().run()
        if self.editable_mode:  # an editable install reads csrc/ in the checkout directly
            return
        dst = Path(self.build_lib) / "deltamic_core" / "_csrc" / "meshft"
        dst.mkdir(parents=True, exist_ok=True)
        files = sorted(p for p in CSRC.iterdir() if p.suffix in KERNEL_SUFFIXES)
        if not any(p.name == "bindings.cpp" for p in files):
            raise RuntimeError(f"kernel sources missing in {CSRC}: is this a complete sdist?")
        for p in files:
            shutil.copy2(p, dst / p.name)


setup(cmdclass={"build_py": build_py_with_kernel_sources})
