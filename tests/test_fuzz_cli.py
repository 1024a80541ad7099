"""Issue 10 fuzz/property test of the command line's argument space (in process, tiny inputs).

Each generated case runs ``deltamic_core.cli.main([...])`` on small inputs (a 10 x 12 x 12
stack, a few meshes, seeds, labels, broken files) with a random subset of options, valid and
invalid values and output locations (new, existing file, ``.``, ``..``, a user's directory, an
earlier result, with and without ``--overwrite``). Properties:

- never a traceback, at most one ``deltamic: error:`` line, and exactly one when it fails;
- a failure leaves the working directory exactly as it was (no partial output, nothing touched);
- success leaves a complete output (manifest matches, measurements finite and non-empty, a
  non-empty rendered image) and touches nothing but the output it was allowed to replace;
- no input file is ever modified.
"""

from __future__ import annotations

import csv
import hashlib
import os
import time
from pathlib import Path

import numpy as np
import pytest

from report_helpers import say as _say

hypothesis = pytest.importorskip("hypothesis")
import tifffile  # noqa: E402
import trimesh  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from deltamic_core.cli import main  # noqa: E402
from deltamic_core.io import outdir, write_tiff  # noqa: E402

N_CASES = int(os.environ.get("DELTAMIC_FUZZ_CLI", "450"))
COUNTS = {"tried": 0, "held": 0, "exit0": 0}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzzcli")
    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(*(np.arange(n) for n in (10, 12, 12)), indexing="ij")
    r = np.sqrt((z - 4.5) ** 2 + (y - 5.5) ** 2 + (x - 5.5) ** 2)
    img = (np.exp(-((r - 3.0) ** 2) / 2.0) * 100 + rng.poisson(2.0, r.shape)).astype(np.float32)
    write_tiff(d / "img.tif", img, (1.0, 1.0, 1.0))
    tifffile.imwrite(d / "nospacing.tif", img)  # no metadata: warned, 1 um assumed
    tifffile.imwrite(
        d / "z0.tif", img, imagej=True, resolution=(1, 1), metadata={"spacing": 0.0, "unit": "um", "axes": "ZYX"}
    )
    write_tiff(d / "const.tif", np.ones_like(img), (1, 1, 1))
    tifffile.imwrite(d / "flat.tif", img[0])
    raw = (d / "img.tif").read_bytes()
    (d / "trunc.tif").write_bytes(raw[: len(raw) // 3])
    (d / "text.tif").write_text("not a tiff")
    lab = (r < 3.0).astype(np.uint16)
    write_tiff(d / "labels.tif", lab, (1, 1, 1))
    sph = trimesh.creation.icosphere(subdivisions=2, radius=3.0)
    sph.vertices += (4.5, 5.5, 5.5)
    sph.export(d / "sphere.obj")
    sph.export(d / "sphere.ply")
    sph.export(d / "sphere.stl")
    f = np.asarray(sph.faces)
    v = np.asarray(sph.vertices)
    trimesh.Trimesh(v, f[v[f][:, :, 0].min(1) > 3.0], process=False).export(d / "open.obj")
    two = trimesh.util.concatenate([sph, sph.copy().apply_translation((0, 0, 1.0))])
    two.export(d / "overlap.obj")
    trimesh.Trimesh(np.zeros((3, 3)) + 4, [[0, 1, 2]], process=False).export(d / "flat.obj")
    for name, rows in {
        "seeds.csv": [[4.5, 5.5, 5.5, 3.0]],
        "seeds_noradius.csv": [[4.5, 5.5, 5.5]],
        "tiny.csv": [[4.5, 5.5, 5.5, 0.01]],
        "overlap.csv": [[4.5, 5.5, 4.5, 3.0], [4.5, 5.5, 6.5, 3.0]],
        "outside.csv": [[40, 5, 5, 2.0]],
    }.items():
        with open(d / name, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["z", "y", "x", "radius"] if len(rows[0]) == 4 else ["z", "y", "x"])
            w.writerows(rows)
    (d / "garbage.csv").write_text("z,y,x\n1,2\nfoo\n")
    (d / "userdir").mkdir()
    (d / "userdir" / "image.tif").write_bytes(raw)
    (d / "userdir" / "measurements.csv").write_text("my,own\n")
    (d / "emptydir").mkdir()
    (d / "sub").mkdir()
    # an earlier result of ours
    assert (
        main(
            [
                "fit",
                str(d / "img.tif"),
                "--seeds",
                str(d / "seeds.csv"),
                "--iterations",
                "1",
                "--levels",
                "1",
                "--quiet",
                "--out",
                str(d / "prev"),
            ]
        )
        == 0
    )
    return d


def _snapshot(root: Path) -> dict:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


IMAGES = [
    "img.tif",
    "nospacing.tif",
    "z0.tif",
    "const.tif",
    "flat.tif",
    "trunc.tif",
    "text.tif",
    "missing.tif",
    "labels.tif",
    "sub",
    "seeds.csv",
]
MESHES = [
    "sphere.obj",
    "sphere.ply",
    "sphere.stl",
    "open.obj",
    "overlap.obj",
    "flat.obj",
    "missing.obj",
    "img.tif",
    "seeds.csv",
    "prev/mesh.rec",
    "prev/mesh.ply",
]
SEEDS = [
    "seeds.csv",
    "seeds_noradius.csv",
    "tiny.csv",
    "overlap.csv",
    "outside.csv",
    "garbage.csv",
    "missing.csv",
    "img.tif",
]
OUTS_DIR = [
    "new",
    "prev",
    "userdir",
    "emptydir",
    ".",
    "..",
    "img.tif",
    "sub/new",
    "nodir/new",
    "userdir/image.tif",
    "sub",
    "",
]
OUTS_FILE = [
    "new.tif",
    "nospacing.tif",
    "prev/labels.tif",
    "prev/new.tif",
    "out.png",
    ".",
    "sub",
    "nodir/x.tif",
    "rendered.tif",
]
# (no huge values: a 50 um PSF on a 12-voxel image is a legitimate, slow fit, not a bad input)
NUM = st.sampled_from(["1", "0", "-1", "0.5", "1e-6", "3", "nan", "inf", "x", "1e309", "2"])
SMALL_INT = st.sampled_from(["1", "0", "-1", "2", "x", "1.5"])


def _fit_options(draw):
    opts = []
    kind = draw(st.sampled_from(["seeds", "init", "labels", "none", "two"]))
    if kind in ("seeds", "two"):
        opts += ["--seeds", draw(st.sampled_from(SEEDS))]
    if kind in ("init", "two"):
        opts += ["--init", draw(st.sampled_from(MESHES))]
    if kind == "labels":
        opts += ["--labels", draw(st.sampled_from(["labels.tif", "img.tif", "const.tif", "missing.tif", "flat.tif"]))]
    pool = {
        "--spacing": lambda: [draw(NUM), draw(NUM), draw(NUM)] if draw(st.booleans()) else ["1", "1", "1"],
        "--sigma": lambda: [draw(NUM)] if draw(st.booleans()) else ["1"],
        "--channel": lambda: [draw(SMALL_INT)],
        "--frame": lambda: [draw(SMALL_INT)],
        "--device": lambda: [draw(st.sampled_from(["cpu", "cuda", "tpu", "cuda:1"]))],
        "--backend": lambda: [draw(st.sampled_from(["auto", "torch", "cpu", "bogus", "nufft"]))],
        "--edge": lambda: [draw(NUM)],
        "--mesh-units": lambda: [draw(st.sampled_from(["um", "voxel", "mm"]))],
        "--loss": lambda: [draw(st.sampled_from(["mse", "poisson", "l1"]))],
        "--psf": lambda: [draw(st.sampled_from(["gaussian", "hanser", "gibson-lanni", "airy"]))],
        "--learn-psf": lambda: [],
        "--na": lambda: [draw(NUM)],
        "--wavelength": lambda: [draw(NUM)],
        "--ni": lambda: [draw(NUM)],
    }
    for name in draw(st.lists(st.sampled_from(sorted(pool)), max_size=3, unique=True)):
        opts += [name, *pool[name]()]
    # keep every fit tiny (the space of iteration counts is not what is fuzzed here)
    opts += [
        "--iterations",
        draw(st.sampled_from(["1", "1", "2", "0", "x"])),
        "--levels",
        draw(st.sampled_from(["1", "1", "2 1", "1 2", "0"])),
        "--quiet",
    ]
    return _split(opts)


def _split(opts):
    out = []
    for o in opts:
        out += o.split(" ") if o.startswith(("1 ", "2 ")) else [o]
    return out


@st.composite
def commands(draw):
    cmd = draw(st.sampled_from(["fit", "fit", "fit", "render", "fit-target", "track", "none"]))
    over = ["--overwrite"] if draw(st.booleans()) else []
    if cmd == "render":
        args = [
            "render",
            draw(st.sampled_from(MESHES)),
            "--shape",
            *[draw(st.sampled_from(["10", "12", "0", "2.5"])) for _ in range(3)],
            "--spacing",
            *[draw(st.sampled_from(["1", "1", "0", "-1", "0.5"])) for _ in range(3)],
        ]
        if draw(st.booleans()):
            args += ["--noise", draw(st.sampled_from(["poisson", "none", "gauss"]))]
        if draw(st.booleans()):
            args += ["--sigma", draw(NUM)]
        if draw(st.booleans()):
            args += ["--mesh-units", draw(st.sampled_from(["um", "voxel"]))]
        return args + ["--out", draw(st.sampled_from(OUTS_FILE))] + over
    if cmd == "fit-target":
        return [
            "fit",
            "--target-mesh",
            draw(st.sampled_from(MESHES)),
            "--target-size",
            draw(NUM),
            "--iterations",
            "1",
            "--levels",
            "1",
            "--quiet",
            "--out",
            draw(st.sampled_from(OUTS_DIR)),
        ] + over
    if cmd == "none":
        return draw(
            st.lists(
                st.sampled_from(["--help", "--version", "fit", "--debug", "bogus", "--out", "x", "-h"]), max_size=3
            )
        )
    image = draw(st.sampled_from(IMAGES))
    return [cmd, image, *_fit_options(draw), "--out", draw(st.sampled_from(OUTS_DIR))] + over


def _outputs_ok(work: Path, argv) -> bool:
    out = argv[argv.index("--out") + 1] if "--out" in argv else None
    if out is None:
        return True
    p = work / out
    if argv[0] == "render":
        arr = tifffile.imread(p)
        return bool(np.all(np.isfinite(arr)) and arr.max() > 0)
    if not (p.is_dir() and outdir.is_ours(p) if argv[0] == "fit" else p.is_dir()):
        return False
    if argv[0] == "fit":
        rows = list(csv.DictReader(open(p / "measurements.csv")))
        vals = [float(v) for r in rows for k, v in r.items() if k != "cell"]
        return bool(rows) and all(np.isfinite(vals))
    return True


@settings(
    max_examples=N_CASES,
    derandomize=True,
    deadline=None,
    database=None,
    phases=(Phase.explicit, Phase.generate),  # no shrinking: CI time, and the case is printed
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much],
)
@given(argv=commands())
def test_fuzz_cli(work, capsys, monkeypatch, argv):
    out_up = "--out" in argv and argv[argv.index("--out") + 1 :][:1] == [".."]
    monkeypatch.chdir(work / "sub" if out_up else work)
    inputs_before = _snapshot(work)
    try:
        rc = main(list(argv))
    except SystemExit as exc:  # argparse --help/--version paths
        rc = int(exc.code or 0)
    out, err = capsys.readouterr()
    COUNTS["tried"] += 1
    problems = []
    if ("Traceback" in err or "Traceback" in out) and "--debug" not in argv:  # --debug asks for it
        problems.append("traceback")
    n_err = sum(line.startswith("deltamic: error:") for line in err.splitlines())
    if n_err > 1 or (rc not in (0,) and n_err != 1 and argv and argv[0] not in ("--help", "-h", "--version")):
        problems.append(f"{n_err} error lines")
    after = _snapshot(work)
    out_arg = argv[argv.index("--out") + 1] if "--out" in argv and argv.index("--out") + 1 < len(argv) else None
    if rc != 0:
        if after != inputs_before:
            changed = sorted(set(after.items()) ^ set(inputs_before.items()))[:4]
            problems.append(f"failed run changed files: {changed}")
    else:
        COUNTS["exit0"] += 1
        allowed = (out_arg or "\0").rstrip("/")
        touched = {k for k in set(after) | set(inputs_before) if after.get(k) != inputs_before.get(k)}
        stray = [k for k in touched if not (k == allowed or k.startswith(allowed + "/"))]
        if stray:
            problems.append(f"touched {stray[:4]}")
        if out_arg and allowed in inputs_before and inputs_before[allowed] != "dir" and argv[0] == "render":
            pass
        if argv and argv[0] in ("fit", "render") and out_arg and not _outputs_ok(work, argv):
            problems.append("incomplete or NaN/empty output")
        # put the fixtures back the way they were for the next case (only our own outputs)
        if out_arg and allowed not in ("prev",) and (work / allowed).exists() and allowed not in inputs_before:
            target = work / allowed
            if target.is_dir():
                if outdir.is_ours(target):
                    outdir.remove_owned(target)
                else:  # a track/batch collection
                    import shutil

                    shutil.rmtree(target)
            else:
                target.unlink()
    if not problems:
        COUNTS["held"] += 1
    assert not problems, (argv, rc, problems, err[-600:])


@pytest.fixture(scope="module", autouse=True)
def _report(request):
    """The counts and the wall time in the test report, also without ``-s``."""
    t0 = time.perf_counter()
    yield
    line = (
        f"fuzz cli: {COUNTS['tried']} tried, {COUNTS['held']} held, {COUNTS['exit0']} exit 0, "
        f"in {time.perf_counter() - t0:.0f} s"
    )
    _say(request.config, [line])


def test_fuzz_cli_counts():
    print(f"fuzz cli: {COUNTS['tried']} tried, {COUNTS['held']} held, {COUNTS['exit0']} exit 0")
