"""Adapters for the native kernels in ``deltamic_core._C`` (built from ``csrc/meshft/``).

The extension exposes ``meshft_forward(verts, faces, weights, freqs)`` and
``meshft_backward(verts, faces, weights, freqs, grad_out)`` and dispatches CPU/CUDA on the
tensors' device. It is optional: when it does not import, only the pure-torch backend exists.
"""
from __future__ import annotations

import torch

_C = None
_IMPORT_ERROR: str | None = None
try:  # pragma: no cover - depends on how the package was built
    from .. import _C  # type: ignore[attr-defined]

    if not (hasattr(_C, "meshft_forward") and hasattr(_C, "meshft_backward")):
        _IMPORT_ERROR = "deltamic_core._C has no meshft_forward/meshft_backward"
        _C = None
except Exception as exc:  # noqa: BLE001 - ImportError, or an ABI mismatch (OSError/undefined symbol)
    _IMPORT_ERROR = f"native extension deltamic_core._C not importable: {exc}"
    _C = None


def import_error() -> str | None:
    return _IMPORT_ERROR


def _compiled_with_cuda() -> bool:
    for attr in ("with_cuda", "WITH_CUDA", "has_cuda", "cuda_compiled"):
        v = getattr(_C, attr, None)
        if v is not None:
            return bool(v() if callable(v) else v)
    return False


class NativeBackend:
    """One device type of the native extension ("cpu" or "cuda"). Exact."""

    needs_band = False
    exact = True

    def __init__(self, device_type: str):
        self.name = device_type
        self.device_type = device_type

    def available(self) -> bool:
        if _C is None:
            return False
        if self.device_type == "cuda":
            return _compiled_with_cuda() and torch.cuda.is_available()
        return True

    def supports(self, device) -> bool:
        return torch.device(device).type == self.device_type and self.available()

    def forward(self, verts, faces, weights, freqs):
        return _C.meshft_forward(verts, faces, weights, freqs)

    def backward(self, verts, faces, weights, freqs, grad_out):
        gv, gw = _C.meshft_backward(verts, faces, weights, freqs, grad_out)
        return gv, gw


def backends() -> dict:
    if _C is None:
        return {}
    return {"cpu": NativeBackend("cpu"), "cuda": NativeBackend("cuda")}
