"""Speed and memory of the mesh Fourier transform (forward + backward).

Workload: a 2,562-vertex (5,120-face) icosphere of radius 10 um at the centre of a box of
0.5 um voxels; the frequencies are the 1.4% of the box's rfft grid with the smallest |k| (the
narrow band of a compact PSF). Compared:

* ``dense``: a pure-torch formulation that materialises (frequencies x faces) complex matrices
  and differentiates through them with autograd (the approach of the public reference
  implementation: Lagrange closed form, a low-order series where phases nearly coincide);
* every backend of ``deltamic_core.meshft`` available here (``cpu`` = native extension,
  ``torch`` = the exact pure-torch backend, tiled), with 1 and 2 threads;
* the native ``cpu`` backend on 128^3 and 256^3 boxes (same voxel size, same sphere), which the
  dense formulation cannot hold in memory (its requirement is extrapolated and printed);
* the large-spread workload (``--large-spread``, also part of the full run): the same
  2,562-vertex sphere with radius 5 um in a 64^3 box of 0.1875 um voxels, frequencies the
  full FFT grid's |k| < 0.3 Nyquist (3,743, in grid order), float32, 2 threads. Its edges span
  up to ~2 radians of phase, so most (face, tile) pairs need the kernel's recursive
  (large-spread) formulas, not its series: ``cpu`` vs ``dense`` there, and ns per
  (frequency x face) pair per thread for the forward and the backward separately.

Each measurement runs in a fresh subprocess so that its peak resident memory
(``VmHWM``) is its own; the memory reported is that peak minus the process's resident size
just before the transform (torch itself, the mesh and the frequencies), i.e. what the transform
needs. Run: ``.venv/bin/python benchmarks/bench_meshft.py`` (3-6 minutes on 2 idle cores;
``--quick`` for a shorter run). Timings on a machine shared with other jobs are noisy: compare
the ratios, which are measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

BAND_FRACTION = 0.014
SPACING_UM = 0.5
RADIUS_UM = 10.0
SUBDIVISIONS = 4  # 2,562 vertices, 5,120 faces

# the large-spread workload
LARGE_N = 64
LARGE_SPACING_UM = 0.1875
LARGE_RADIUS_UM = 5.0
LARGE_NYQUIST_FRACTION = 0.3


# ----------------------------------------------------------------------------------------
# Work done inside the child process


def _band_freqs(n: int):
    """(K, 3) float64: the BAND_FRACTION of the n^3 rfft grid with the smallest |k|."""
    import torch

    kz = torch.fft.fftfreq(n, SPACING_UM, dtype=torch.float64)
    kx = torch.fft.rfftfreq(n, SPACING_UM, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(kz, kz, kx, indexing="ij"), dim=-1).reshape(-1, 3)
    n_band = int(round(BAND_FRACTION * grid.shape[0]))
    order = torch.argsort(grid.norm(dim=1), stable=True)[:n_band]
    return grid[order].contiguous()


def _large_spread_freqs():
    """(3743, 3) float64: the full 64^3 FFT grid (0.1875 um) with |k| < 0.3 Nyquist, grid order."""
    import torch

    k1 = torch.fft.fftfreq(LARGE_N, LARGE_SPACING_UM, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(k1, k1, k1, indexing="ij"), dim=-1).reshape(-1, 3)
    nyquist = 0.5 / LARGE_SPACING_UM
    return grid[grid.norm(dim=1) < LARGE_NYQUIST_FRACTION * nyquist].contiguous()


def _workload(n: int, freqs_path: str | None = None, dtype_name: str = "float32", large: bool = False):
    import numpy as np
    import torch

    dtype = getattr(torch, dtype_name)
    verts, faces = _icosphere(SUBDIVISIONS)
    if large:
        centre = np.full(3, LARGE_N * LARGE_SPACING_UM / 2)
        verts = torch.tensor(verts * LARGE_RADIUS_UM + centre, dtype=dtype)
        return verts, torch.tensor(faces, dtype=torch.int64), _large_spread_freqs().to(dtype)
    centre = np.full(3, n * SPACING_UM / 2)
    verts = torch.tensor(verts * RADIUS_UM + centre, dtype=dtype)
    faces = torch.tensor(faces, dtype=torch.int64)
    # the band is computed once by the parent: building it needs the whole grid, which would
    # otherwise dominate the child's peak memory
    freqs = torch.from_numpy(np.load(freqs_path)) if freqs_path else _band_freqs(n)
    return verts, faces, freqs.to(dtype).contiguous()


def _icosphere(subdivisions: int):
    """Unit icosphere (subdivision 4: 2,562 vertices), via trimesh."""
    import numpy as np
    import trimesh

    ico = trimesh.creation.icosphere(subdivisions=subdivisions, radius=1.0)
    return np.asarray(ico.vertices, dtype=np.float64), np.asarray(ico.faces, dtype=np.int64)


def _dense_mesh_ft(verts, faces, freqs):
    """(K, F) matrices end to end, differentiated by autograd (no analytic backward)."""
    import torch

    two_pi = 2 * torch.pi
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    two_area = torch.linalg.cross(b - a, c - a).norm(dim=1)  # (F,)
    phase = two_pi * freqs @ verts.T  # (K, V)
    pa, pb, pc = phase[:, faces[:, 0]], phase[:, faces[:, 1]], phase[:, faces[:, 2]]  # (K, F)
    ea, eb, ec = torch.exp(-1j * pa), torch.exp(-1j * pb), torch.exp(-1j * pc)
    dab, dac, dbc = pa - pb, pa - pc, pb - pc
    tol = 1e-3
    small = (dab.abs() < tol) | (dac.abs() < tol) | (dbc.abs() < tol)
    one = torch.ones_like(dab)
    sab, sac, sbc = (torch.where(small, one, d) for d in (dab, dac, dbc))
    closed = -(ea / (sab * sac) - eb / (sab * sbc) + ec / (sac * sbc))
    m = (pa + pb + pc) / 3  # 2nd-order series
    ya, yb, yc = pa - m, pb - m, pc - m
    h2 = ya * ya + yb * yb + yc * yc + ya * yb + ya * yc + yb * yc
    series = torch.exp(-1j * m) * (0.5 - h2 / 24)
    f = torch.where(small, series, closed)
    return (two_area * f).sum(dim=1)


def _child(cfg: dict) -> dict:
    import torch

    torch.set_num_threads(cfg["threads"])
    verts, faces, freqs = _workload(cfg["n"], cfg.get("freqs_path"), large=cfg.get("large", False))
    weights = torch.ones(faces.shape[0], dtype=verts.dtype)
    grad_seed = torch.randn(freqs.shape[0], dtype=torch.complex64, generator=torch.Generator().manual_seed(0))

    if cfg["impl"] == "dense":

        def run_forward():
            return _dense_mesh_ft(verts.requires_grad_(True), faces, freqs)
    else:
        from deltamic_core.meshft import mesh_ft

        def run_forward():
            return mesh_ft(verts.requires_grad_(True), faces, freqs, weights, backend=cfg["impl"])

    # warm-up on a tiny problem (library loading, thread pool), excluded from the baseline
    small = freqs[:8]
    if cfg["impl"] == "dense":
        _dense_mesh_ft(verts.requires_grad_(True), faces, small).abs().sum().backward()
    else:
        mesh_ft(verts.requires_grad_(True), faces, small, weights, backend=cfg["impl"]).abs().sum().backward()
    verts.grad = None
    base_kb = _current_rss_kb()

    c0, t0 = time.process_time(), time.perf_counter()
    out = run_forward()
    c1, t1 = time.process_time(), time.perf_counter()
    (grad_seed.conj() * out).real.sum().backward()
    c2, t2 = time.process_time(), time.perf_counter()
    peak_kb = _peak_rss_kb()
    return {
        "forward_s": t1 - t0,
        "backward_s": t2 - t1,
        "forward_cpu_s": c1 - c0,
        "backward_cpu_s": c2 - c1,
        "peak_mb": peak_kb / 1024,
        "extra_mb": max(peak_kb - base_kb, 0) / 1024,
        "K": int(freqs.shape[0]),
        "F": int(faces.shape[0]),
        "V": int(verts.shape[0]),
    }


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _current_rss_kb() -> int:
    return _status_kb("VmRSS")


def _peak_rss_kb() -> int:
    # VmHWM belongs to this process image; ru_maxrss would also count the parent's resident
    # size at fork time (Linux keeps it across exec), which is large after building a band.
    return _status_kb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# ----------------------------------------------------------------------------------------
# Driver


_FREQ_FILES: dict = {}


def _freqs_file(n: int) -> str:
    import os
    import tempfile

    import numpy as np

    if n not in _FREQ_FILES:
        fd, path = tempfile.mkstemp(suffix=f"_band{n}.npy")
        os.close(fd)
        np.save(path, _band_freqs(n).numpy())
        _FREQ_FILES[n] = path
    return _FREQ_FILES[n]


def _run(impl: str, n: int, threads: int, large: bool = False) -> dict:
    cfg = {"impl": impl, "n": n, "threads": threads, "large": large}
    if not large:
        cfg["freqs_path"] = _freqs_file(n)
    code = (
        f"import json, sys; sys.path.insert(0, {str(__file__.rsplit('/', 1)[0])!r}); "
        f"import bench_meshft as b; print('RESULT' + json.dumps(b._child({cfg!r})))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    for line in res.stdout.splitlines():
        if line.startswith("RESULT"):
            return json.loads(line[len("RESULT") :])
    raise RuntimeError(f"{impl} n={n} threads={threads} failed:\n{res.stderr[-3000:]}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 threads only, no 256^3 run")
    ap.add_argument(
        "--large-spread",
        action="store_true",
        help="only the large-spread workload (exact cpu kernel vs dense, 2 threads)",
    )
    ap.add_argument(
        "--repeats", type=int, default=3, help="runs of each side of the large-spread comparison (medians; default 3)"
    )
    args = ap.parse_args(argv)
    if args.large_spread:
        _large_spread(args.repeats)
        return

    from deltamic_core.meshft import available_backends

    backends = [b for b in ("cpu", "torch") if b in available_backends()]
    print(f"backends available here: {available_backends()} (benchmarked: {backends})")
    rows = []

    def record(impl, n, threads):
        r = _run(impl, n, threads)
        pairs = r["K"] * r["F"]
        r.update(
            impl=impl,
            n=n,
            threads=threads,
            pairs=pairs,
            fwd_pps=pairs / r["forward_s"],
            bwd_pps=pairs / r["backward_s"],
        )
        rows.append(r)
        print(
            f"  {impl:6s} {n:4d}^3 threads={threads}: K={r['K']:7d} F={r['F']}  forward {r['forward_s']:8.3f} s"
            f"  backward {r['backward_s']:8.3f} s  +{r['extra_mb']:8.1f} MB (peak RSS {r['peak_mb']:.0f} MB)",
            flush=True,
        )
        return r

    print("\n64^3 box, 0.5 um voxels, 1.4% band, 2,562-vertex sphere of radius 10 um")
    thread_counts = (1, 2) if not args.quick else (2,)
    dense = {t: record("dense", 64, t) for t in thread_counts}
    per_backend = {}
    for b in backends:
        for threads in thread_counts:
            per_backend[(b, threads)] = record(b, 64, threads)

    if "cpu" in backends:
        for n in (128, 256) if not args.quick else (128,):
            record("cpu", n, 2)

    print("\nSummary")
    print(
        f"{'impl':8s} {'box':>5s} {'thr':>3s} {'K':>7s} {'fwd s':>9s} {'bwd s':>9s} {'fwd Mpairs/s':>13s}"
        f" {'bwd Mpairs/s':>13s} {'extra MB':>9s}"
    )
    for r in rows:
        print(
            f"{r['impl']:8s} {r['n']:5d} {r['threads']:3d} {r['K']:7d} {r['forward_s']:9.3f} {r['backward_s']:9.3f}"
            f" {r['fwd_pps'] / 1e6:13.2f} {r['bwd_pps'] / 1e6:13.2f} {r['extra_mb']:9.1f}"
        )

    d2 = dense[max(dense)]
    bytes_per_pair = d2["extra_mb"] * 2**20 / d2["pairs"]
    print(
        f"\ndense formulation: {bytes_per_pair:.0f} bytes and "
        f"{1e9 * (d2['forward_s'] + d2['backward_s']) / d2['pairs']:.0f} ns per (frequency x face) pair "
        f"(forward + backward, {max(dense)} threads)"
    )
    for (b, threads), r in per_backend.items():
        d = dense[threads]
        dense_t = d["forward_s"] + d["backward_s"]
        t = r["forward_s"] + r["backward_s"]
        mem_ratio = r["extra_mb"] / d["extra_mb"] if d["extra_mb"] > 0 else float("nan")
        print(
            f"{b:6s} vs dense (64^3, {threads} thread{'s' if threads > 1 else ''}): {dense_t / t:7.1f}x faster"
            f" (target >= 100x for cpu), memory {r['extra_mb']:.1f} MB vs {d['extra_mb']:.1f} MB = 1/{1 / mem_ratio:.0f}"
            f" (target <= 1/20); peak RSS incl. torch {r['peak_mb']:.0f} MB vs {d['peak_mb']:.0f} MB"
        )
    for r in rows:
        if r["impl"] == "cpu" and r["n"] > 64:
            need = bytes_per_pair * r["pairs"] / 2**30
            print(
                f"cpu {r['n']}^3: {r['pairs'] / 1e6:.0f} M pairs in {r['forward_s'] + r['backward_s']:.2f} s "
                f"using {r['extra_mb']:.0f} MB; the dense formulation would need ~{need:.0f} GB"
            )
    import os

    for path in _FREQ_FILES.values():
        os.remove(path)
    if "cpu" in backends:
        _large_spread(args.repeats if not args.quick else 1)


def _large_spread(repeats: int, threads: int = 2) -> None:
    """Exact cpu kernel vs the dense formulation on the large-spread workload (issue 12, goal 5).

    The two sides alternate (dense, cpu, dense, cpu, ...) so that both see the same machine
    load; the ratio printed is the median of the per-pair ratios, next to the medians of each.
    """
    from statistics import median

    print(
        f"\nlarge-spread workload: {LARGE_N}^3 box of {LARGE_SPACING_UM} um voxels, sphere of radius "
        f"{LARGE_RADIUS_UM} um (2,562 vertices), |k| < {LARGE_NYQUIST_FRACTION} Nyquist, float32, "
        f"{threads} threads, {repeats} run(s) of each"
    )
    dense, cpu = [], []
    for _ in range(max(1, repeats)):
        for impl, runs in (("dense", dense), ("cpu", cpu)):
            r = _run(impl, LARGE_N, threads, large=True)
            runs.append(r)
            pairs = r["K"] * r["F"]
            print(
                f"  {impl:6s} K={r['K']} F={r['F']}: forward {r['forward_s']:7.3f} s, backward "
                f"{r['backward_s']:7.3f} s (CPU time {r['forward_cpu_s']:.3f} + {r['backward_cpu_s']:.3f} s)"
                f"; {1e9 * r['forward_s'] * threads / pairs:6.1f} + {1e9 * r['backward_s'] * threads / pairs:6.1f}"
                f" ns per pair per thread",
                flush=True,
            )
    pairs = cpu[0]["K"] * cpu[0]["F"]

    def tot(r):
        return r["forward_s"] + r["backward_s"]

    def ns(key, runs):
        return 1e9 * median(r[key] for r in runs) / pairs

    ratios = [tot(d) / tot(c) for d, c in zip(dense, cpu)]
    print(
        f"cpu, {pairs / 1e6:.1f} M pairs: forward {ns('forward_s', cpu) * threads:.1f} ns, backward "
        f"{ns('backward_s', cpu) * threads:.1f} ns per pair per thread (median wall time x {threads} "
        f"threads); CPU time {ns('forward_cpu_s', cpu):.1f} + {ns('backward_cpu_s', cpu):.1f} ns per pair"
    )
    print(
        f"dense: forward+backward median {median(tot(r) for r in dense):.2f} s; cpu: "
        f"{median(tot(r) for r in cpu):.3f} s"
    )
    print(
        f"cpu vs dense, large-spread workload ({threads} threads): {median(ratios):.0f}x faster "
        f"(median of {len(ratios)} paired runs: {', '.join(f'{x:.0f}' for x in ratios)}; target >= 100x)"
    )


if __name__ == "__main__":
    main()
