"""Build a wheel, install it into a fresh virtual environment, and check that npe2 finds the plugin.

The fresh venv must not download torch/napari again: it sees the heavy dependencies through a
``.pth`` line pointing at the development environment's site-packages. Directories added by a
``.pth`` line are plain ``sys.path`` entries (their own ``.pth`` files, such as the editable
install's finder, are not executed), and the venv's own site-packages comes first, so
``napari_deltamic`` is imported from the wheel; the test asserts that.
"""
from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

CHECK = r"""
import importlib.metadata as md, json, sys
import napari_deltamic
from npe2 import PluginManager
pm = PluginManager()
pm.discover()
mf = pm.get_manifest("napari-deltamic")
c = mf.contributions
dist = md.distribution("napari-deltamic")
print(json.dumps({
    "module": napari_deltamic.__file__,
    "dist": str(dist.locate_file("")),
    "readers": sorted(p for r in c.readers for p in r.filename_patterns),
    "writers": sorted(e for w in c.writers for e in w.filename_extensions),
    "widgets": [w.display_name for w in c.widgets],
    "samples": [s.display_name for s in c.sample_data],
    "commands": sorted(cmd.id for cmd in c.commands),
}))
"""


def _copy_sources(dst: Path) -> None:
    """Copy only what the build needs (no .venv, .git, build products) so the repo stays clean."""
    for name in ("pyproject.toml", "setup.py", "README.md", "MANIFEST.in", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, dst / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.egg-info", "*.pyc")
    shutil.copytree(ROOT / "src", dst / "src", ignore=ignore)
    if (ROOT / "csrc").exists():
        shutil.copytree(ROOT / "csrc", dst / "csrc", ignore=ignore)


def test_wheel_installs_and_npe2_discovers_plugin(tmp_path):
    pytest.importorskip("build")
    src = tmp_path / "src_tree"
    src.mkdir()
    _copy_sources(src)
    wheels = tmp_path / "wheels"
    env = dict(os.environ, DELTAMIC_NO_EXT="1")  # the plugin test needs no compiled kernels
    proc = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(wheels), str(src)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (wheel,) = wheels.glob("napari_deltamic-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "napari_deltamic/napari.yaml" in names
    assert "deltamic_core/data/Sample01_007.rec" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[napari.manifest]" in text and "napari_deltamic:napari.yaml" in text

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    vpy = venv / "bin" / "python"
    purelib = Path(subprocess.check_output([str(vpy), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                           text=True).strip())
    # reuse the heavy dependencies of the development environment, after the venv's own packages
    dev_site = [p for p in {sysconfig.get_path("purelib"), sysconfig.get_path("platlib"), *site.getsitepackages()}
                if Path(p).is_dir()]
    (purelib / "_dev_env_deps.pth").write_text("\n".join(sorted(dev_site)) + "\n")
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(vpy), "install", "--no-deps", "--no-index",
                           "-q", str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    clean_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    proc = subprocess.run([str(vpy), "-c", CHECK], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env=clean_env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(info["module"]).is_relative_to(purelib), f"imported from {info['module']}, not the wheel"
    assert Path(info["dist"]).resolve() == purelib.resolve()
    assert {"*.tif", "*.tiff", "*.obj", "*.ply", "*.stl", "*.off", "*.vtk", "*.rec"} <= set(info["readers"])
    assert info["writers"] == [".obj", ".ply", ".rec"]
    assert info["widgets"] == ["deltaMic inverse rendering"]
    assert info["samples"] == ["deltaMic synthetic 3-cell embryo"]
    assert len(info["commands"]) == 4
