"""Run every example script (``--quick``) so they never rot, and check what they print."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(name: str, *extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), "--quick", *map(str, extra)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("SUMMARY ")]
    assert len(lines) == 1, proc.stdout
    return json.loads(lines[0][len("SUMMARY "):])


def test_every_example_is_tested():
    tested = {"fit_image.py", "fit_mesh.py", "learn_psf.py"}
    present = {p.name for p in EXAMPLES.glob("*.py")} - {"demo.py"}  # demo.py: run by `make demo`
    assert present <= tested, f"untested examples: {sorted(present - tested)}"


@pytest.mark.slow
def test_fit_image_recovers_cell_volumes(tmp_path):
    s = _run("fit_image.py", "--out", tmp_path / "fit")
    assert len(s["volume_rel_errors"]) == 2
    # quick settings: coarse voxels, few iterations, Poisson noise; still within 15%
    assert max(abs(e) for e in s["volume_rel_errors"]) < 0.15
    assert (tmp_path / "fit" / "report.json").is_file()


@pytest.mark.slow
def test_fit_mesh_moves_the_sphere_towards_the_cow():
    s = _run("fit_mesh.py")
    assert s["final"]["mean_um"] < 0.7 * s["initial"]["mean_um"]


@pytest.mark.slow
def test_learn_psf_recovers_the_gaussian_width():
    s = _run("learn_psf.py")
    assert all(abs(r) < 0.25 for r in s["rel_error"]), s
