"""deltamic_core.io.outdir: an output never deletes or changes a file the tool did not write.

Ownership must be proven (manifest and digests), the location is checked before any work,
stale staging directories are swept only if ours, nothing is overwritten without the flag.

The number in a test's name is the case of the data-safety issue (10) it guards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from deltamic_core.io import outdir
from deltamic_core.io.outdir import MANIFEST_NAME, OutputError
from file_helpers import tree_digest as _tree


def _publish(out: Path, files: dict, **kw) -> None:
    with outdir.staged_output(out, **kw) as tmp:
        for name, text in files.items():
            (tmp / name).write_text(text)


# ---------------------------------------------------------------------------------------------
# 1. the output deletes the input / ownership must be proven
# ---------------------------------------------------------------------------------------------
def test_case01_directory_with_user_files_named_like_outputs_is_refused(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "image.tif").write_bytes(b"raw data")
    (data / "measurements.csv").write_text("hand,made\n")
    before = _tree(data)
    with pytest.raises(OutputError, match="did not write"):
        outdir.check_output_dir(data, overwrite=True)
    with pytest.raises(OutputError):
        _publish(data, {"report.json": "{}"}, overwrite=True)
    assert _tree(data) == before


def test_case01_input_inside_the_output_is_refused_even_if_ours(tmp_path):
    out = tmp_path / "out"
    _publish(out, {"labels.tif": "ours"})
    assert outdir.is_ours(out)
    with pytest.raises(OutputError, match="contains the input"):
        outdir.check_output_dir(out, overwrite=True, inputs=[out / "labels.tif"])
    with pytest.raises(OutputError, match="contains the input"):
        outdir.check_output_dir(tmp_path / "out", overwrite=True, inputs=[str(out / "x" / ".." / "labels.tif")])


def test_case01_changed_or_extended_output_is_not_replaced(tmp_path):
    out = tmp_path / "out"
    _publish(out, {"a.csv": "1", "b.csv": "2"})
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="notes.txt"):
        outdir.check_output_dir(out, overwrite=True)
    (out / "notes.txt").unlink()
    (out / "a.csv").write_text("edited by hand")
    with pytest.raises(OutputError, match="changed"):
        outdir.check_output_dir(out, overwrite=True)
    (out / "a.csv").write_text("1")
    outdir.check_output_dir(out, overwrite=True)  # identical again: ours
    _publish(out, {"c.csv": "3"}, overwrite=True)
    assert sorted(p.name for p in out.iterdir() if p.name != MANIFEST_NAME) == ["c.csv"]


def test_case01_a_forged_manifest_does_not_make_a_directory_ours(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "raw.tif").write_bytes(b"x")
    (d / MANIFEST_NAME).write_text(json.dumps({"tool": "deltamic", "files": {}}))
    with pytest.raises(OutputError):
        outdir.check_output_dir(d, overwrite=True)
    assert (d / "raw.tif").read_bytes() == b"x"


# ---------------------------------------------------------------------------------------------
# 3. the output location is validated before any work; stale staging dirs are swept
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [".", "..", "", "./", "sub/.."])
def test_case03_dot_and_dotdot_are_refused_up_front(bad, tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub" if bad == ".." else tmp_path)
    with pytest.raises(OutputError):
        outdir.check_output_dir(bad)


def test_case03_missing_parent_file_and_read_only_parent(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        outdir.check_output_dir(tmp_path / "nope" / "out")
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        outdir.check_output_dir(tmp_path / "f")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user who can write anywhere")
        with pytest.raises(OutputError, match="not writable"):
            outdir.check_output_dir(ro / "out")
    finally:
        ro.chmod(0o755)


def test_case03_ancestor_of_cwd_is_refused(tmp_path, monkeypatch):
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    with pytest.raises(OutputError, match="current directory"):
        outdir.check_output_dir(tmp_path / "a")


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_case03_stale_partials_of_dead_runs_are_swept_only_if_ours(tmp_path):
    pid = _dead_pid()
    stale = tmp_path / f".out.partial-{pid}-0123abcd"
    stale.mkdir()
    (stale / outdir.MARKER_NAME).write_text("{}")
    (stale / "mesh.ply").write_text("half")
    foreign = tmp_path / f".out.partial-{pid}-89abcdef"  # same pattern, no marker: not ours
    foreign.mkdir()
    (foreign / "x").write_text("keep")
    alive = tmp_path / f".out.partial-{os.getppid()}-00000000"  # a live process: never touched
    alive.mkdir()
    (alive / outdir.MARKER_NAME).write_text("{}")
    outdir.check_output_dir(tmp_path / "out")
    assert not stale.exists() and foreign.exists() and alive.exists()


def test_case03_failure_inside_the_block_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with outdir.staged_output(out) as tmp:
            (tmp / "a").write_text("1")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# 7. silent overwrite
# ---------------------------------------------------------------------------------------------
def test_case07_rerun_needs_overwrite(tmp_path):
    out = tmp_path / "out"
    _publish(out, {"a": "1"})
    with pytest.raises(OutputError, match="--overwrite"):
        outdir.check_output_dir(out)
    _publish(out, {"a": "2"}, overwrite=True)
    assert (out / "a").read_text() == "2"


def test_case07_single_file_only_overwritten_with_flag_and_only_ours(tmp_path):
    from deltamic_core.io import write_tiff

    raw = tmp_path / "raw.tif"
    tifffile.imwrite(raw, np.zeros((3, 4, 4), np.uint16))
    with pytest.raises(OutputError, match="--overwrite"):
        outdir.check_output_file(raw)
    with pytest.raises(OutputError, match="not written by deltamic"):
        outdir.check_output_file(raw, overwrite=True)
    ours = tmp_path / "ours.tif"
    write_tiff(ours, np.zeros((3, 4, 4), np.float32), (1, 1, 1))
    outdir.check_output_file(ours, overwrite=True)
    with pytest.raises(OutputError, match="input"):
        outdir.check_output_file(ours, overwrite=True, inputs=[ours])


def test_exchange_keeps_old_or_new_complete(tmp_path):
    """The publish step swaps atomically: no instant without a complete result."""
    out = tmp_path / "out"
    _publish(out, {"a": "old"})
    old_inode = out.stat().st_ino
    _publish(out, {"a": "new"}, overwrite=True)
    assert out.stat().st_ino != old_inode and (out / "a").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_collection_root_files_and_items(tmp_path):
    root = tmp_path / "batch"
    col = outdir.Collection(root).open()
    col.write_text("summary.csv", "a\n")
    col.write_text("summary.csv", "b\n")
    with col.stage_item("item1") as tmp:
        (tmp / "report.json").write_text("{}")
    assert outdir.Collection(root).problem() is None
    outdir.check_output_dir(root, resume=True)
    (root / "stray.txt").write_text("user")
    with pytest.raises(OutputError):
        outdir.check_output_dir(root, resume=True)
    for bad in ("", ".", "..", ".hidden", "a/b"):
        with pytest.raises(ValueError):
            col.item(bad)
