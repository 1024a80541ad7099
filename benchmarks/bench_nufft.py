"""Performance program for the NUFFT backend (issue: interactive speed without a GPU).

P2: nufft vs the exact cpu backend, embryo mesh, 128^3 image, realistic PSF:
    forward+backward time ratio (target >= 30x) at <= 1e-4 relative L2 image error.
P3: one full fit iteration (render + loss + backward) with nufft at 128^3, in units of one
    torch.fft.rfftn of the padded grid measured in the same run (target <= 10x).
Also: a breakdown of where the nufft iteration spends its time, and the accuracy/speed
trade-off across tolerances.

Run: .venv/bin/python benchmarks/bench_nufft.py [--quick]
"""

from __future__ import annotations

import argparse
import time

import torch

from deltamic_core.io import read_mesh
from deltamic_core.meshft import available_backends, get_backend
from deltamic_core.psf import GaussianPSF
from deltamic_core.render import Renderer

DATA = __import__("pathlib").Path(__file__).resolve().parents[1] / "src" / "deltamic_core" / "data" / "Sample01_007.rec"


def embryo(n: int, spacing: float):
    """The bundled embryo scaled to fill ~85% of an n^3 image of isotropic voxels."""
    mesh = read_mesh(DATA, spacing_um=(1.0, 1.0, 1.0))
    v = mesh.verts
    lo, hi = v.min(0), v.max(0)
    scale = 0.85 * n * spacing / (hi - lo).max()
    v = (v - (lo + hi) / 2) * scale + n * spacing / 2
    return v, mesh.faces, mesh.face_intensity()


def timed(fn, repeat=1):
    best = float("inf")
    out = None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def fwd_bwd(renderer, verts, faces, weights, target):
    v = verts.clone().requires_grad_(True)
    img = renderer.render(v, faces, weights)
    loss = ((img - target) ** 2).mean()
    loss.backward()
    return img.detach(), v.grad


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="64^3 instead of 128^3")
    ap.add_argument("--size", type=int, default=None)
    args = ap.parse_args()
    n = args.size or (64 if args.quick else 128)
    spacing = 0.25
    torch.manual_seed(0)
    print(f"threads: {torch.get_num_threads()}, backends: {available_backends()}")
    v, f, w = embryo(n, spacing)
    dtype = torch.float32
    verts = torch.tensor(v, dtype=dtype)
    faces = torch.tensor(f)
    weights = torch.tensor(w, dtype=dtype)
    psf = GaussianPSF(sigma_um=(0.45, 0.16, 0.16)).requires_grad_(False)  # ~confocal, NA 1.2 water
    exact_name = "cpu" if "cpu" in available_backends() else "torch"
    r_exact = Renderer((n, n, n), spacing, psf, band_threshold=1e-3, backend=exact_name, dtype=dtype)
    K = len(r_exact.band)
    print(
        f"image {n}^3 at {spacing} um, padded grid {r_exact.grid.shape}, band {K} freqs "
        f"({100 * r_exact.band.fraction:.1f}% of the half spectrum), {len(faces)} faces, "
        f"{K * len(faces) / 1e6:.0f} M pairs per pass"
    )

    # reference image in float64 with the exact backend: the truth for the error
    r64 = Renderer((n, n, n), spacing, psf, band_threshold=1e-3, backend=exact_name, dtype=torch.float64)
    with torch.no_grad():
        t_ref, ref = timed(lambda: r64.render(verts.double(), faces, weights.double()))
    target = (ref * 1.02).to(dtype)  # any target: we only time the gradient

    t_exact, (img_exact, g_exact) = timed(lambda: fwd_bwd(r_exact, verts, faces, weights, target))
    err_exact = float((img_exact.double() - ref).norm() / ref.norm())
    print(f"exact {exact_name} fwd+bwd: {t_exact:.2f} s, rel L2 image error (float32) {err_exact:.1e}")

    if "nufft" not in available_backends():
        print("nufft backend not available (finufft missing)")
        return
    nufft = get_backend("nufft")
    rows = []
    r_nu = Renderer((n, n, n), spacing, psf, band_threshold=1e-3, backend="nufft", dtype=dtype)
    default_tol = nufft.tol
    for tol in (1e-3, 1e-4, 1e-5, 1e-6):
        nufft.tol = tol
        fwd_bwd(r_nu, verts, faces, weights, target)  # warm-up (rule tables)
        t_nu, (img_nu, g_nu) = timed(lambda: fwd_bwd(r_nu, verts, faces, weights, target), repeat=3)
        err = float((img_nu.double() - ref).norm() / ref.norm())
        gerr = float((g_nu - g_exact).norm() / g_exact.norm())
        rows.append((tol, t_nu, err, gerr, nufft.last_n_points))
    nufft.tol = default_tol
    print("\nnufft tol | fwd+bwd s | speed-up vs exact | rel L2 image err | rel L2 grad diff | points")
    for tol, t_nu, err, gerr, npts in rows:
        print(f"  {tol:7.0e} | {t_nu:9.3f} | {t_exact / t_nu:17.1f} | {err:16.1e} | {gerr:16.1e} | {npts}")
    ok = [r for r in rows if r[2] <= 1e-4]
    best = min(ok, key=lambda r: r[1]) if ok else None
    if best:
        print(
            f"\nP2: nufft (tol {best[0]:.0e}) is {t_exact / best[1]:.1f}x faster than exact {exact_name} "
            f"forward+backward at {best[2]:.1e} relative L2 image error (target >= 30x at <= 1e-4)"
        )

    # P3: one full fit iteration vs one rfftn of the padded grid
    nufft.tol = best[0] if best else default_tol
    x = torch.randn(r_nu.grid.shape, dtype=dtype)
    torch.fft.rfftn(x)
    t_fft, _ = timed(lambda: torch.fft.rfftn(x), repeat=5)
    t_it, _ = timed(lambda: fwd_bwd(r_nu, verts, faces, weights, target), repeat=3)
    print(
        f"P3: one fit iteration (render + loss + backward, nufft, {n}^3) = {t_it:.3f} s = "
        f"{t_it / t_fft:.1f} x one rfftn of the padded grid ({t_fft * 1e3:.1f} ms) (target <= 10x)"
    )

    # where the time goes
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fwd_bwd(r_nu, verts, faces, weights, target)
    print("\nprofile of one nufft iteration (top 12 by self CPU time):")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    t0 = time.perf_counter()
    with torch.no_grad():
        xq, s, _ = nufft._points(verts, faces, weights, r_nu.band)
    t1 = time.perf_counter()
    nufft.forward(verts, faces, weights, r_nu.band)
    t2 = time.perf_counter()
    print(
        f"quadrature points: {t1 - t0:.3f} s; nufft forward alone: {t2 - t1:.3f} s; "
        f"{xq.shape[1]} points ({xq.shape[1] / len(faces):.0f} per face)"
    )
    nufft.tol = default_tol


if __name__ == "__main__":
    main()
