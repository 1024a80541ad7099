"""Adapters for the native kernels (csrc/meshft), built just in time by :mod:`._build`.

The extension exposes ``meshft_forward(verts, faces, weights, freqs)``,
``meshft_backward(verts, faces, weights, freqs, grad_out)`` and ``cpu_isa()`` and dispatches
CPU/CUDA on the tensors' device. It is optional: where it cannot be built, "auto" uses the
finufft backend (see ``_registry.resolve``). Nothing is compiled at import time; the first
use compiles it once per machine and torch version (``python -m deltamic_core.build_kernel``
does it ahead of time). ``DELTAMIC_NO_EXT=1`` disables it.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import warnings

import torch

from . import _build

logger = logging.getLogger("deltamic_core.meshft")

_lock = threading.RLock()
_C = None
_ERROR: _build.KernelUnavailable | None = None
_PLAN = None


def _disabled() -> bool:
    return os.environ.get("DELTAMIC_NO_EXT") == "1"


def _notify(msg: str) -> None:
    logger.info(msg)
    warnings.warn(msg, _build.KernelNotice, stacklevel=3)


def _plan():
    global _PLAN
    if _PLAN is None:
        _PLAN = _build.plan()
    return _PLAN


def _accept(mod):
    global _C
    if not (hasattr(mod, "meshft_forward") and hasattr(mod, "meshft_backward")):
        raise _build.KernelUnavailable("the built kernel has no meshft_forward/meshft_backward")
    _C = mod
    sys.modules.setdefault("deltamic_core._C", mod)
    return mod


def extension(*, build: bool = True):
    """The kernel module, building it if needed (``build=False``: only an existing build).

    Raises :class:`~deltamic_core.meshft._build.KernelUnavailable` (an ImportError) when it
    cannot be had; the reason is remembered for this process.
    """
    global _ERROR
    if _C is not None:
        return _C
    if _disabled():
        raise _build.KernelUnavailable("the native kernel is disabled (DELTAMIC_NO_EXT=1)")
    with _lock:
        if _C is not None:
            return _C
        if _ERROR is not None:
            raise _ERROR
        try:
            p = _plan()
            mod = _build.load_cached(p)
            if mod is None:
                fail = _build.recorded_failure(p)
                if fail is not None:
                    raise fail
                if not build:
                    return None
                mod = _build.build(notify=_notify)
            return _accept(mod)
        except _build.KernelUnavailable as e:
            _ERROR = e
            raise
        except Exception as e:  # noqa: BLE001 - an unloadable binary (ABI mismatch, missing symbol)
            _ERROR = _build.KernelUnavailable(f"the built kernel could not be loaded: {e}")
            raise _ERROR from None


def state() -> str:
    """ "loaded", "built" (on disk), "buildable" (first use will compile), or "unavailable"."""
    if _C is not None:
        return "loaded"
    if _disabled() or _ERROR is not None:
        return "unavailable"
    try:
        p = _plan()
    except Exception:  # noqa: BLE001 - a broken plan means no native kernel
        return "unavailable"
    if p.ok_marker.is_file() and p.library.is_file():
        return "built"
    if p.failed_marker.is_file() or p.toolchain is None or p.sources is None:
        return "unavailable"
    return "buildable"


def unavailable_reason() -> str | None:
    """Why the kernel is not usable, in plain words (None if it is or may still be)."""
    if _ERROR is not None:
        return _ERROR.reason
    if _disabled():
        return "the native kernel is disabled (DELTAMIC_NO_EXT=1)"
    try:
        p = _plan()
    except Exception as e:  # noqa: BLE001 - reported as the reason
        return str(e)
    fail = _build.recorded_failure(p)
    if fail is not None:
        return fail.reason
    if p.sources is None:
        return "the kernel's C++ sources are missing from this installation"
    if p.toolchain is None:
        return f"no working C++ compiler was found (tried '{_build.compiler_command()}')"
    return None


def import_error() -> str | None:  # kept for callers of the previous API
    return unavailable_reason()


def _compiled_with_cuda() -> bool:
    for attr in ("with_cuda", "WITH_CUDA", "has_cuda", "cuda_compiled"):
        v = getattr(_C, attr, None)
        if v is not None:
            return bool(v() if callable(v) else v)
    return False


class NativeBackend:
    """One device type of the native extension ("cpu" or "cuda"). Exact.

    ``available()`` never compiles: it is true when the kernel is built, or can be built on
    first use (a compiler was found and no earlier attempt failed). ``ensure()`` builds it.
    """

    needs_band = False
    exact = True

    def __init__(self, device_type: str):
        self.name = device_type
        self.device_type = device_type

    def available(self) -> bool:
        if self.device_type == "cuda":
            if not torch.cuda.is_available():
                return False
            if _C is not None:
                return _compiled_with_cuda()
            return state() in ("built", "buildable") and _build.want_cuda()
        return state() != "unavailable"

    def ensure(self) -> bool:
        """Load (building on first use) the kernel; False if it cannot be had here."""
        try:
            extension()
        except _build.KernelUnavailable:
            return False
        return self.device_type != "cuda" or (_compiled_with_cuda() and torch.cuda.is_available())

    def supports(self, device) -> bool:
        return torch.device(device).type == self.device_type and self.available()

    def forward(self, verts, faces, weights, freqs):
        return extension().meshft_forward(verts, faces, weights, freqs)

    def backward(self, verts, faces, weights, freqs, grad_out):
        gv, gw = extension().meshft_backward(verts, faces, weights, freqs, grad_out)
        return gv, gw


def backends() -> dict:
    return {"cpu": NativeBackend("cpu"), "cuda": NativeBackend("cuda")}
