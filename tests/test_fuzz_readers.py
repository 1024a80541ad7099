"""Issue 10 fuzz/property tests of the readers: TIFF, every mesh format, seeds CSV.

Generated inputs (valid, subtly wrong and damaged) must either read into something valid
(finite float32 stack with a positive finite voxel size; a mesh with finite vertices and
in-range faces; finite seeds with positive radii) or fail with one ValueError/TypeError-style
message -- never another exception type, never a NaN result. Deterministic (``derandomize``)
so CI is reproducible; the counts are in ``FUZZ_COUNTS`` (printed by ``-s``).
"""

from __future__ import annotations

import io
import struct
import time

import numpy as np
import pytest

from report_helpers import say as _say

hypothesis = pytest.importorskip("hypothesis")
import tifffile  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def FAST(n):
    return settings(
        max_examples=n,
        derandomize=True,
        deadline=None,
        database=None,
        phases=(Phase.explicit, Phase.generate),  # no shrinking: CI time, and the case is printed
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
    )


COUNTS = {}


def _count(name, ok=True):
    tried, fine = COUNTS.get(name, (0, 0))
    COUNTS[name] = (tried + 1, fine + bool(ok))


@pytest.fixture(scope="module", autouse=True)
def _report(request):
    """The counts and the wall time in the test report, also without ``-s``."""
    t0 = time.perf_counter()
    yield
    lines = [f"fuzz {k}: {n} tried, {ok} held" for k, (n, ok) in sorted(COUNTS.items())]
    lines.append(f"fuzz readers: {sum(n for n, _ in COUNTS.values())} cases in {time.perf_counter() - t0:.0f} s")
    _say(request.config, lines)


_OK_ERRORS = (ValueError, TypeError, FileNotFoundError)


def _mutate(raw: bytes, data) -> bytes:
    kind = data.draw(st.sampled_from(["none", "truncate", "flip", "garbage-tail", "zero-run"]))
    if kind == "none" or not raw:
        return raw
    if kind == "truncate":
        return raw[: data.draw(st.integers(0, len(raw) - 1))]
    if kind == "flip":
        b = bytearray(raw)
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(b) - 1))
            b[i] ^= 1 << data.draw(st.integers(0, 7))
        return bytes(b)
    if kind == "garbage-tail":
        return raw + data.draw(st.binary(min_size=1, max_size=64))
    i = data.draw(st.integers(0, len(raw) - 1))
    n = data.draw(st.integers(1, 64))
    return raw[:i] + b"\x00" * n + raw[i + n :]


# ---------------------------------------------------------------------------------------------
# TIFF
# ---------------------------------------------------------------------------------------------
_SPACINGS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32), st.just(0.0), st.just(-1.0), st.floats(1e-3, 10.0)
)


@FAST(500)
@given(data=st.data())
def test_fuzz_read_image(tmp_path_factory, data):
    from deltamic_core.io import read_image

    d = tmp_path_factory.mktemp("tif", numbered=True)
    ndim = data.draw(st.integers(1, 5))
    shape = tuple(data.draw(st.lists(st.integers(1, 6), min_size=ndim, max_size=ndim)))
    dtype = data.draw(st.sampled_from([np.uint8, np.uint16, np.float32, np.float64, np.int32]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    arr = (rng.random(shape) * 100).astype(dtype)
    if dtype in (np.float32, np.float64) and data.draw(st.booleans()) and arr.size:
        arr.flat[0] = data.draw(st.sampled_from([np.nan, np.inf, -np.inf, 0.0]))
    flavour = data.draw(st.sampled_from(["plain", "imagej", "ome"]))
    p = d / "x.tif"
    try:
        if flavour == "imagej":
            axes = "TZCYX"[-ndim:] if ndim >= 2 else None
            md = {"unit": data.draw(st.sampled_from(["um", "micron", "nm", "pixel", "parsec", ""]))}
            if axes:
                md["axes"] = axes
            if data.draw(st.booleans()):
                md["spacing"] = data.draw(_SPACINGS)
            res = data.draw(st.floats(0.01, 100.0))
            tifffile.imwrite(
                p,
                arr.astype(np.float32) if dtype in (np.float64, np.int32) else arr,
                imagej=True,
                resolution=(res, res),
                metadata=md,
            )
        elif flavour == "ome":
            md = {"axes": "TCZYX"[-ndim:]} if ndim >= 2 else {}
            for ax in "XYZ":
                if data.draw(st.booleans()):
                    md[f"PhysicalSize{ax}"] = data.draw(_SPACINGS)
            tifffile.imwrite(p, arr, ome=True, metadata=md)
        else:
            tifffile.imwrite(p, arr)
    except Exception:  # noqa: BLE001 - tifffile refuses some combinations
        return
    p.write_bytes(_mutate(p.read_bytes(), data))
    channel = data.draw(st.sampled_from([None, 0, 1, 5]))
    try:
        img, meta = read_image(p, channel=channel)
    except _OK_ERRORS as exc:
        msg = str(exc)
        ok = bool(msg) and "\n" not in msg.strip()
        _count("tiff", ok)
        assert ok, msg
        return
    ok = (
        img.dtype == np.float32
        and img.ndim in (3, 4)
        and np.all(np.isfinite(img))
        and all(np.isfinite(s) and s > 0 for s in meta.spacing_um)
        and min(img.shape[-3:]) >= 1
    )
    _count("tiff", ok)
    assert ok, (img.shape, meta)


# ---------------------------------------------------------------------------------------------
# meshes: .obj .ply .stl .off .vtk .rec
# ---------------------------------------------------------------------------------------------
def _obj(v, f):
    return (
        "".join(f"v {a!r} {b!r} {c!r}\n" for a, b, c in v) + "".join(f"f {a + 1} {b + 1} {c + 1}\n" for a, b, c in f)
    ).encode()


def _off(v, f):
    return (
        f"OFF\n{len(v)} {len(f)} 0\n"
        + "".join(f"{a!r} {b!r} {c!r}\n" for a, b, c in v)
        + "".join(f"3 {a} {b} {c}\n" for a, b, c in f)
    ).encode()


def _rec(v, f, labels):
    text = f"{len(v)}\n" + "".join(f"{a!r} {b!r} {c!r}\n" for a, b, c in v) + f"{len(f)}\n"
    text += "".join(f"{a} {b} {c} {l1} {l2}\n" for (a, b, c), (l1, l2) in zip(f, labels))
    return text.encode()


def _ply(v, f):
    head = (
        f"ply\nformat ascii 1.0\nelement vertex {len(v)}\nproperty double x\nproperty double y\n"
        f"property double z\nelement face {len(f)}\nproperty list uchar int vertex_indices\nend_header\n"
    )
    return (
        head + "".join(f"{a!r} {b!r} {c!r}\n" for a, b, c in v) + "".join(f"3 {a} {b} {c}\n" for a, b, c in f)
    ).encode()


def _stl(v, f):
    out = io.BytesIO()
    out.write(b"\0" * 80 + struct.pack("<I", len(f)))
    with np.errstate(over="ignore", invalid="ignore"):
        v32 = np.asarray(v, dtype=np.float64).reshape(-1, 3).astype(np.float32)  # 1e300 -> inf, as a file can hold
    for t in f:
        out.write(struct.pack("<3f", 0, 0, 0))
        for i in t:
            out.write(v32[i].tobytes() if 0 <= i < len(v32) else struct.pack("<3f", 0, 0, 0))
        out.write(b"\0\0")
    return out.getvalue()


def _vtk(v, f):
    text = (
        f"# vtk DataFile Version 4.2\nfuzz\nASCII\nDATASET POLYDATA\nPOINTS {len(v)} double\n"
        + "".join(f"{a!r} {b!r} {c!r}\n" for a, b, c in v)
        + f"POLYGONS {len(f)} {4 * len(f)}\n"
        + "".join(f"3 {a} {b} {c}\n" for a, b, c in f)
    )
    return text.encode()


_FLOATS = st.one_of(st.floats(-50, 50), st.sampled_from([float("nan"), float("inf"), 0.0, 1e300]))


@FAST(700)
@given(data=st.data())
def test_fuzz_read_mesh(tmp_path_factory, data):
    from deltamic_core.io import read_mesh

    d = tmp_path_factory.mktemp("mesh", numbered=True)
    suffix = data.draw(st.sampled_from([".obj", ".ply", ".stl", ".off", ".vtk", ".rec"]))
    base = data.draw(st.booleans())
    if base:  # a real closed shape, possibly damaged below
        import trimesh

        m = trimesh.creation.icosphere(subdivisions=data.draw(st.integers(0, 2)), radius=data.draw(st.floats(0.1, 20)))
        v, f = np.asarray(m.vertices).tolist(), np.asarray(m.faces).tolist()
        if data.draw(st.booleans()):
            v[data.draw(st.integers(0, len(v) - 1))] = [data.draw(_FLOATS) for _ in range(3)]
    else:
        nv = data.draw(st.integers(0, 8))
        v = [[data.draw(_FLOATS) for _ in range(3)] for _ in range(nv)]
        f = [[data.draw(st.integers(-2, nv + 1)) for _ in range(3)] for _ in range(data.draw(st.integers(0, 8)))]
    labels = [[data.draw(st.integers(-1, 3)), data.draw(st.integers(-1, 3))] for _ in f]
    raw = {
        ".obj": lambda: _obj(v, f),
        ".off": lambda: _off(v, f),
        ".rec": lambda: _rec(v, f, labels),
        ".ply": lambda: _ply(v, f),
        ".stl": lambda: _stl(v, f),
        ".vtk": lambda: _vtk(v, f),
    }[suffix]()
    p = d / f"m{suffix}"
    p.write_bytes(_mutate(raw, data))
    spacing = data.draw(st.sampled_from([None, (1.0, 0.5, 0.5)]))
    try:
        mesh = read_mesh(p, spacing_um=spacing)
    except _OK_ERRORS as exc:
        ok = bool(str(exc)) and "\n" not in str(exc).strip()
        _count(f"mesh{suffix}", ok)
        assert ok, str(exc)
        return
    except Exception as exc:  # noqa: BLE001 - any other type is the failure reported
        _count(f"mesh{suffix}", False)
        raise AssertionError(f"{suffix}: {type(exc).__name__}: {exc}") from None
    ok = (
        len(mesh.faces) > 0
        and np.all(np.isfinite(mesh.verts))
        and mesh.faces.min() >= 0
        and mesh.faces.max() < len(mesh.verts)
    )
    _count(f"mesh{suffix}", ok)
    assert ok


# ---------------------------------------------------------------------------------------------
# seeds CSV
# ---------------------------------------------------------------------------------------------
def _read_seeds():
    try:
        from deltamic_core.pipeline.inputs import read_seeds
    except ImportError:
        from deltamic_core.cli import read_seeds
    return read_seeds


_CELL = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-5, 50).map(str),
    st.sampled_from(["", " ", "x", "1e", "nan", "-0", "1,5", '"3"', "\ufeff1"]),
    st.text(max_size=5),
)


@FAST(500)
@given(data=st.data())
def test_fuzz_read_seeds(tmp_path_factory, data):
    read_seeds = _read_seeds()
    d = tmp_path_factory.mktemp("seeds", numbered=True)
    header = data.draw(
        st.sampled_from(
            [["z", "y", "x"], ["z", "y", "x", "radius"], ["x", "y", "z"], ["Z", " y ", "x", "radius"], ["a", "b"], []]
        )
    )
    rows = data.draw(st.lists(st.lists(_CELL, min_size=0, max_size=5), max_size=6))
    text = "\n".join(",".join(r) for r in [header] + rows)
    p = d / "s.csv"
    try:
        p.write_bytes(_mutate(text.encode("utf-8", "surrogatepass"), data))
    except UnicodeEncodeError:
        return
    try:
        c, r = read_seeds(p)
    except Exception as exc:  # noqa: BLE001 - the type is checked below
        ok = isinstance(exc, ValueError) or type(exc).__name__ in ("CLIError", "InputError")
        ok = ok and "\n" not in str(exc).strip()
        _count("seeds.csv", ok)
        assert ok, f"{type(exc).__name__}: {exc}"
        return
    ok = (
        c.ndim == 2
        and c.shape[1] == 3
        and len(c) > 0
        and np.all(np.isfinite(c))
        and (r is None or (len(r) == len(c) and np.all(np.isfinite(r)) and np.all(r > 0)))
    )
    _count("seeds.csv", ok)
    assert ok
