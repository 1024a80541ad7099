"""Input validation shared by the whole core.

Every public entry point checks its arguments here so that bad input produces one clear
``ValueError``/``TypeError`` naming the argument, instead of a traceback from deep inside torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

FLOAT_DTYPES = (torch.float32, torch.float64)


def as_tensor(x, name: str, *, dtype=None, device=None) -> torch.Tensor:
    """Convert array-likes to a tensor without copying tensors that already fit."""
    if isinstance(x, torch.Tensor):
        t = x
    else:
        try:
            t = torch.as_tensor(np.asarray(x))
        except Exception as exc:  # noqa: BLE001 - re-raised with the argument's name
            raise TypeError(f"{name}: cannot convert {type(x).__name__} to an array ({exc})") from None
    if dtype is not None or device is not None:
        t = t.to(dtype=dtype if dtype is not None else t.dtype, device=device if device is not None else t.device)
    return t


def check_vertices(verts, name: str = "verts") -> torch.Tensor:
    """(V, 3) float32/float64, finite, at least 3 vertices."""
    v = as_tensor(verts, name)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"{name} must have shape (V, 3) in (z, y, x) order, got {tuple(v.shape)}")
    if v.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {v.dtype}")
    if v.shape[0] < 3:
        raise ValueError(f"{name} is empty or has fewer than 3 vertices ({v.shape[0]})")
    if not bool(torch.isfinite(v).all()):
        bad = int((~torch.isfinite(v)).any(dim=1).sum())
        raise ValueError(f"{name} contains NaN or Inf coordinates ({bad} vertices)")
    return v


def check_faces(faces, n_verts: int, name: str = "faces", device=None) -> torch.Tensor:
    """(F, 3) integer indices in [0, n_verts); returned as int64."""
    f = as_tensor(faces, name)
    if f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"{name} must have shape (F, 3) (triangles), got {tuple(f.shape)}")
    if f.dtype.is_floating_point or f.dtype.is_complex or f.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer array (int64 indices), got {f.dtype}")
    if f.shape[0] == 0:
        raise ValueError(f"{name} is empty: the mesh has no triangles")
    f = f.long()
    lo, hi = int(f.min()), int(f.max())
    if lo < 0 or hi >= n_verts:
        raise ValueError(f"{name} index out of range: indices span [{lo}, {hi}] but there are {n_verts} vertices")
    if device is not None and f.device != torch.device(device):
        raise ValueError(f"{name} is on {f.device} but the vertices are on {device}: move both to one device")
    return f


def check_spacing(spacing, name: str = "spacing_um") -> tuple[float, float, float]:
    """Three positive finite voxel sizes (z, y, x) in micrometres; a scalar means isotropic."""
    try:
        arr = np.asarray(spacing, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be three numbers (z, y, x) in micrometres, got {spacing!r}") from None
    if arr.size == 1:
        arr = np.repeat(arr, 3)
    if arr.size != 3:
        raise ValueError(f"{name} must have 3 values (z, y, x), got {arr.size}")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name} must be positive and finite, got {tuple(arr.tolist())}")
    return tuple(float(a) for a in arr)


def check_image(
    image, name: str = "image", *, ndim: int = 3, min_side: int = 0, constant_ok: bool = False
) -> np.ndarray:
    """A real, finite stack of ``ndim`` axes ((Z, Y, X), or (T, Z, Y, X) for 4) with at least
    ``min_side`` voxels per axis, not constant unless ``constant_ok`` (then check it later with
    :func:`check_not_constant`); returned as an ndarray (dtype kept)."""
    img = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if img.ndim != ndim:
        axes = "(Z, Y, X)" if ndim == 3 else "(T, Z, Y, X)"
        raise ValueError(f"{name} must be a {ndim}D stack {axes}, got shape {img.shape}")
    if not np.issubdtype(img.dtype, np.number) or np.iscomplexobj(img):
        raise TypeError(f"{name} must be a real numeric array, got dtype {img.dtype}")
    if min(img.shape) < min_side:
        raise ValueError(f"{name} is too small: shape {img.shape} (need at least {min_side} voxels per axis)")
    bad = int(np.count_nonzero(~np.isfinite(img)))
    if bad:
        raise ValueError(f"{name} contains {bad} NaN or Inf voxels")
    if not constant_ok:
        check_not_constant(img, name)
    return img


def check_not_constant(image: np.ndarray, name: str = "image") -> None:
    """An image with at least two different values (a constant one has nothing to fit)."""
    if image.size and float(image.max()) == float(image.min()):
        raise ValueError(f"{name} is constant (every voxel = {float(image.min()):g}): nothing to fit")


def check_shape(shape, name: str = "shape") -> tuple[int, int, int]:
    """Three positive integers (z, y, x)."""
    try:
        items = list(shape)
        vals = tuple(int(s) for s in items)
        exact = all(not isinstance(s, bool) and float(s) == v for s, v in zip(items, vals))
    except (TypeError, ValueError, OverflowError):
        raise TypeError(f"{name} must be three integers (z, y, x), got {shape!r}") from None
    if not exact:
        raise ValueError(f"{name} must be three whole numbers of voxels (z, y, x), got {tuple(items)!r}")
    if len(vals) != 3 or any(s <= 0 for s in vals):
        raise ValueError(f"{name} must be three positive integers (z, y, x), got {vals}")
    return vals


def check_vector3(value, name: str) -> tuple[float, float, float]:
    """Three finite numbers (z, y, x), e.g. an origin in micrometres."""
    try:
        arr = np.asarray(value, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be three numbers (z, y, x), got {value!r}") from None
    if arr.size == 1:
        arr = np.repeat(arr, 3)
    if arr.size != 3 or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be three finite numbers (z, y, x), got {value!r}")
    return tuple(float(a) for a in arr)


def check_same_device(tensors: Sequence[tuple[str, torch.Tensor]]) -> torch.device:
    """All named tensors on one device; returns it."""
    devices = {t.device for _, t in tensors}
    if len(devices) > 1:
        desc = ", ".join(f"{n} on {t.device}" for n, t in tensors)
        raise ValueError(f"tensors are on different devices ({desc}): move them to one device")
    return next(iter(devices))


def check_memory(n_bytes: float, what: str, limit_bytes: float | None = None) -> None:
    """Refuse an allocation that cannot fit, before making it.

    ``limit_bytes`` defaults to 80% of the machine's available memory (or the
    ``DELTAMIC_MAX_MEMORY_GB`` environment variable when set).
    """
    if limit_bytes is None:
        limit_bytes = available_memory_bytes() * 0.8
    if n_bytes > limit_bytes:
        raise ValueError(
            f"{what} needs about {n_bytes / 2**30:.1f} GiB but only {limit_bytes / 2**30:.1f} GiB is allowed: "
            "use a smaller image/crop, a coarser spacing, or a larger band threshold"
        )


def available_memory_bytes() -> float:
    import os

    env = os.environ.get("DELTAMIC_MAX_MEMORY_GB")
    if env:
        return float(env) * 2**30 / 0.8
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil  # type: ignore

        return float(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001
        return 8 * 2**30


def check_device(device, name: str = "device") -> torch.device:
    """A torch device that exists here (a clear error for 'cuda' without a CUDA device)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{name} must be 'cpu' or 'cuda' (or 'cuda:N'), got {device!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"{name}={str(device)!r} requested but torch sees no CUDA device "
                "(this torch build or machine has none): use device='cpu'"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{name}={str(device)!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type != "cpu":
        raise ValueError(f"{name} must be 'cpu' or 'cuda', got {device!r}")
    return dev
