"""Bad input to mesh_ft gives one clear ValueError/TypeError naming the argument; dispatch rules."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from deltamic_core import meshft
from deltamic_core.meshft import available_backends, get_backend, mesh_ft, register_backend

warnings.filterwarnings("ignore", message="mesh_ft: using the pure-torch backend")


def device_of(backend: str) -> str:
    return "cuda" if backend == "cuda" else "cpu"


def good(dtype=torch.float64, device="cpu"):
    verts = torch.tensor(
        [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=dtype, device=device
    )
    faces = torch.tensor([[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]], device=device)
    freqs = torch.tensor([[0.0, 0.0, 0.0], [0.5, -0.2, 1.0]], dtype=dtype, device=device)
    return verts, faces, freqs


BACKENDS = available_backends()


def a_band():
    from deltamic_core.grid import FFTGrid, GridBand

    grid = FFTGrid((8, 8, 8), (0.5, 0.5, 0.5))
    mask = torch.zeros(grid.rfft_shape, dtype=torch.bool)
    mask[:2, :2, :2] = True
    return GridBand.from_mask(grid, mask)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "mutate, exc, words",
    [
        (lambda v, f, k: (v[:, :2], f, k, None), ValueError, ["verts", "(V, 3)"]),
        (lambda v, f, k: (v[:2], f[:0], k, None), ValueError, ["verts"]),
        (lambda v, f, k: (v.to(torch.int64), f, k, None), TypeError, ["verts", "float"]),
        (
            lambda v, f, k: (v.clone().index_fill_(0, torch.tensor([1]), float("nan")), f, k, None),
            ValueError,
            ["verts", "NaN"],
        ),
        (
            lambda v, f, k: (v.clone().index_fill_(0, torch.tensor([2]), float("inf")), f, k, None),
            ValueError,
            ["verts", "Inf"],
        ),
        (lambda v, f, k: (v, f[:, :2], k, None), ValueError, ["faces", "(F, 3)"]),
        (lambda v, f, k: (v, f[:0], k, None), ValueError, ["faces", "empty"]),
        (lambda v, f, k: (v, f.to(torch.float64), k, None), TypeError, ["faces", "integer"]),
        (lambda v, f, k: (v, f + 1, k, None), ValueError, ["faces", "out of range"]),
        (lambda v, f, k: (v, f - 1, k, None), ValueError, ["faces", "out of range"]),
        (lambda v, f, k: (v, f, k[:, :2], None), ValueError, ["freqs", "(K, 3)"]),
        (lambda v, f, k: (v, f, k.to(torch.float32), None), TypeError, ["freqs", "dtype"]),
        (lambda v, f, k: (v, f, k.to(torch.int64), None), TypeError, ["freqs"]),
        (lambda v, f, k: (v, f, k.clone().fill_(float("nan")), None), ValueError, ["freqs", "NaN"]),
        (lambda v, f, k: (v, f, k.clone().requires_grad_(True), None), ValueError, ["freqs", "grad"]),
        (lambda v, f, k: (v, f, k, torch.ones(3, dtype=v.dtype, device=v.device)), ValueError, ["weights", "(F,)"]),
        (lambda v, f, k: (v, f, k, torch.ones(4, 1, dtype=v.dtype, device=v.device)), ValueError, ["weights"]),
        (
            lambda v, f, k: (v, f, k, torch.ones(4, dtype=torch.float32, device=v.device)),
            TypeError,
            ["weights", "dtype"],
        ),
        (lambda v, f, k: (v, f, k, torch.ones(4, dtype=torch.int64, device=v.device)), TypeError, ["weights"]),
        (
            lambda v, f, k: (v, f, k, torch.full((4,), float("inf"), dtype=v.dtype, device=v.device)),
            ValueError,
            ["weights", "Inf"],
        ),
    ],
)
def test_bad_input_names_the_argument(backend, mutate, exc, words):
    v, f, k = good(device=device_of(backend))
    args = mutate(v, f, k)
    if get_backend(backend).needs_band:
        if words[0] == "freqs":
            pytest.skip("this backend takes grid bands, not frequency tensors")
        args = (args[0], args[1], a_band(), args[3])
    with pytest.raises(exc) as info:
        mesh_ft(*args, backend=backend)
    msg = str(info.value)
    for w in words:
        assert w in msg, msg


def test_unknown_backend():
    v, f, k = good()
    with pytest.raises(ValueError, match="unknown meshft backend 'fastest'"):
        mesh_ft(v, f, k, backend="fastest")
    with pytest.raises(TypeError, match="backend"):
        mesh_ft(v, f, k, backend=3)


def test_backend_unavailable_for_device():
    class CudaOnly:
        needs_band = False

        def supports(self, device):
            return torch.device(device).type == "cuda"

        def forward(self, *a):  # pragma: no cover - never reached
            raise AssertionError

        backward = forward

    register_backend("_test_cuda_only", CudaOnly())
    try:
        v, f, k = good()
        with pytest.raises(ValueError, match="cannot run on device cpu"):
            mesh_ft(v, f, k, backend="_test_cuda_only")
    finally:
        meshft._registry._BACKENDS.pop("_test_cuda_only")


def test_band_backend_needs_grid_band():
    class BandOnly:
        needs_band = True

        def supports(self, device):
            return True

        def forward(self, *a):  # pragma: no cover - never reached
            raise AssertionError

        backward = forward

    register_backend("_test_band", BandOnly())
    try:
        v, f, k = good()
        with pytest.raises(ValueError, match="GridBand"):
            mesh_ft(v, f, k, backend="_test_band")
    finally:
        meshft._registry._BACKENDS.pop("_test_band")


def test_register_backend_checks_the_protocol():
    with pytest.raises(TypeError, match="forward"):
        register_backend("_broken", object())
    with pytest.raises(ValueError, match="auto"):
        register_backend("auto", get_backend("torch"))


def test_registered_backend_is_called_through_autograd():
    """A registered backend's forward/backward is what mesh_ft and .backward() call."""
    calls = []
    torch_b = get_backend("torch")

    class Spy:
        needs_band = False

        def supports(self, device):
            return True

        def forward(self, verts, faces, weights, freqs):
            calls.append("forward")
            return torch_b.forward(verts, faces, weights, freqs)

        def backward(self, verts, faces, weights, freqs, grad_out):
            calls.append("backward")
            return torch_b.backward(verts, faces, weights, freqs, grad_out)

    register_backend("_spy", Spy())
    try:
        v, f, k = good()
        v.requires_grad_(True)
        mesh_ft(v, f, k, backend="_spy").abs().sum().backward()
        assert calls == ["forward", "backward"]
        assert "_spy" in available_backends()
    finally:
        meshft._registry._BACKENDS.pop("_spy")


def test_mismatched_devices():
    v, f, k = good()
    meta = torch.zeros(2, 3, dtype=torch.float64, device="meta")
    with pytest.raises(ValueError, match="device"):
        mesh_ft(v, f, meta)
    with pytest.raises(ValueError, match="device"):
        mesh_ft(v, f.to("meta"), k)
    with pytest.raises(ValueError, match="device"):
        mesh_ft(v, f, k, torch.ones(4, dtype=torch.float64, device="meta"))


def test_array_like_inputs_follow_verts():
    v, f, k = good()
    out = mesh_ft(v.numpy(), f.numpy(), k.numpy(), np.ones(4))
    torch.testing.assert_close(out, mesh_ft(v, f, k))
    v32 = v.to(torch.float32)
    out32 = mesh_ft(v32, f.tolist(), k.numpy(), [1.0, 1.0, 1.0, 1.0])  # float64 arrays -> float32
    assert out32.dtype == torch.complex64
    torch.testing.assert_close(out32, mesh_ft(v32, f, k.to(torch.float32)))


def test_available_backends_lists_torch_and_native_when_built():
    names = available_backends()
    assert "torch" in names
    if meshft._native.import_error() is None:
        assert "cpu" in names
    assert ("cuda" in names) == ("cuda" in names and torch.cuda.is_available())


def test_auto_announces_the_pure_torch_fallback_once(monkeypatch):
    if any(get_backend(n).supports(torch.device("cpu")) for n in ("cpu",) if n in available_backends()):
        pytest.skip("the native CPU kernels are built: auto does not fall back on CPU")
    monkeypatch.setattr(meshft._registry, "_fallback_warned", False)
    v, f, k = good()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        mesh_ft(v, f, k)
        mesh_ft(v, f, k)
    msgs = [str(r.message) for r in rec if "fast exact kernel is not available" in str(r.message)]
    assert len(msgs) == 1 and "pure-PyTorch" in msgs[0]  # plain tensors: no GridBand for nufft


def test_auto_prefers_native_cpu_when_built():
    name, _ = meshft._registry.resolve("auto", torch.device("cpu"), announce=False)
    assert name == ("cpu" if "cpu" in available_backends() else "torch")
