"""Backend registry for the mesh Fourier transform.

A backend is any object with

* ``forward(verts, faces, weights, freqs) -> complex (K,)``,
* ``backward(verts, faces, weights, freqs, grad_out) -> (grad_verts (V, 3), grad_weights (F,))``
  with grad_theta = Re(sum_k conj(grad_out_k) dU_k / dtheta),
* ``supports(device) -> bool`` and ``needs_band: bool`` (True if ``freqs`` must be a
  :class:`~deltamic_core.grid.GridBand`, which it then receives instead of a tensor).

Optional attributes: ``exact`` (False for approximate methods such as a NUFFT; "auto" picks
"nufft" only where the native kernel cannot be had, see :func:`resolve`), ``ensure()`` (the
native backends: compile on first use, False if that fails), ``available()`` (False when its dependencies are missing at run time) and
``memory_estimate_bytes(n_faces, n_freqs, dtype)``.
"""

from __future__ import annotations

import logging
import threading
import warnings

import torch

from . import _native
from ._torch_backend import TorchBackend

logger = logging.getLogger("deltamic_core.meshft")

_BACKENDS: dict = {}
_ORDER = ("cuda", "cpu", "nufft", "torch")
_lock = threading.Lock()
_fallback_warned = False


def register_backend(name: str, backend) -> None:
    """Add (or replace) a backend under ``name``; see the module docstring for the protocol."""
    if not isinstance(name, str) or not name or name == "auto":
        raise ValueError(f"backend name must be a non-empty string other than 'auto', got {name!r}")
    missing = [a for a in ("forward", "backward", "supports") if not callable(getattr(backend, a, None))]
    if missing or not hasattr(backend, "needs_band"):
        raise TypeError(
            f"backend {name!r} does not follow the meshft backend protocol: "
            f"missing {', '.join(missing + ([] if hasattr(backend, 'needs_band') else ['needs_band']))}"
        )
    with _lock:
        _BACKENDS[name] = backend


def _is_available(backend) -> bool:
    avail = getattr(backend, "available", None)
    if avail is None:
        return True
    try:
        return bool(avail() if callable(avail) else avail)
    except Exception:  # noqa: BLE001 - a broken optional dependency means "not available"
        return False


def available_backends() -> list[str]:
    """Names of the backends usable in this process (in order of preference)."""
    names = [n for n in _BACKENDS if _is_available(_BACKENDS[n])]
    return sorted(names, key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n))


def get_backend(name: str):
    """The backend object registered as ``name`` (raises ValueError if unknown/unavailable)."""
    if not isinstance(name, str):
        raise TypeError(f"backend must be a string, got {type(name).__name__}")
    b = _BACKENDS.get(name)
    if b is None:
        known = ", ".join(["auto"] + sorted(_BACKENDS))
        raise ValueError(f"backend: unknown meshft backend {name!r}; known: {known}")
    if not _is_available(b):
        raise ValueError(
            f"backend: {name!r} is not available in this installation (available: {', '.join(available_backends())})"
        )
    return b


def _fallback_notice(reason: str | None, chosen: str) -> str:
    how = (
        "the NUFFT method instead (the same images to about 1 part in 10,000, which does not change a segmentation)"
        if chosen == "nufft"
        else "the pure-PyTorch method instead (the same results, slower)"
    )
    return (
        f"deltaMic's fast exact kernel is not available on this computer "
        f"({reason or 'no native kernel for this device'}), so it uses {how}. To get it, install a C++ "
        "compiler (Linux: g++; macOS: the Xcode command line tools; Windows: Visual Studio Build Tools) "
        "and restart."
    )


def resolve(name: str, device: torch.device, *, announce: bool = True, band: bool = False) -> tuple[str, object]:
    """Pick the backend for ``device``.

    "auto": the native kernel for the device (compiled on first use: only when ``announce`` is
    true, i.e. for a real transform, not for a query), else, where the native kernel cannot
    be had, "nufft" when the caller can pass a GridBand (``band=True``) and finufft works, else
    the pure-torch backend; the fallback is announced once per process, in plain words.
    """
    global _fallback_warned
    device = torch.device(device)
    if name != "auto":
        b = get_backend(name)
        if not b.supports(device):
            raise ValueError(f"backend: {name!r} cannot run on device {device}; use backend='auto' or move the tensors")
        ensure = getattr(b, "ensure", None)
        if announce and ensure is not None and not ensure():
            raise ValueError(
                f"backend: {name!r} (the compiled kernel) is not available on this computer: "
                f"{_native.unavailable_reason()}; use backend='auto'"
            )
        return name, b
    native = "cuda" if device.type == "cuda" else "cpu"
    b = _BACKENDS.get(native)
    if b is not None and _is_available(b) and b.supports(device):
        ensure = getattr(b, "ensure", None)
        if not announce or ensure is None or ensure():
            return native, b
    chosen = "torch"
    nb = _BACKENDS.get("nufft")
    if band and nb is not None and _is_available(nb) and nb.supports(device):
        chosen = "nufft"
    if announce and not _fallback_warned:
        _fallback_warned = True
        msg = _fallback_notice(_native.unavailable_reason(), chosen)
        logger.info(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=4)
    return chosen, _BACKENDS[chosen]


def _register_defaults() -> None:
    register_backend("torch", TorchBackend())
    for name, b in _native.backends().items():
        register_backend(name, b)
    from .nufft_backend import NufftBackend  # approximate; listed only where finufft imports

    register_backend("nufft", NufftBackend())


_register_defaults()
