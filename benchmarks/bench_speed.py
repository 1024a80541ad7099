"""Speed program (issue: an embryo fit in seconds, live updates in napari).

Every figure is a ratio measured in this run against the floor: one ``torch.fft.rfftn`` of the
image grid padded by the PSF extent (no oversampling), same threads, same process.

- goal 2: one full-resolution fit iteration (``Fitter.step``: render + loss + backward +
  preconditioned update) at 128^3 and 256 x 512 x 512, Fourier route (before) vs real-space
  route (after); the transform's backward / forward on the same mesh;
- goal 3: undersampled PSFs (a confocal PSF given as a ``MeasuredPSF``, a narrow Gaussian):
  plan building and one iteration on a 73 x 202 x 130 embryo grid, every route (real: native
  splat, Gaussian or the MeasuredPSF's low-rank table; real-torch: the pure-torch splat, for the
  MeasuredPSF the dense trilinear table; fourier; auto: what the renderer picks);
- goal 1 (proxy until the independent accuracy benchmark lands): the 4-cell-sized embryo fit at
  the accuracy issue's effort (80/120/100 iterations) vs the seeded watershed, same image;
- goal "c" (coarse levels of the goal-1 proxy): one iteration per level factor on the
  real-space route vs the Fourier route (the rule of ``render.route`` for block-averaged PSFs;
  ``--coarse-blur`` sets ``FitConfig.coarse_blur``, which sets the coarse windows);
- goal 4 (proxy, no viewer): the napari sample's fit at the widget's defaults: time to the
  first step result after the fitter is created, steps per second at each level.

Run: ``.venv/bin/python benchmarks/bench_speed.py [--goals 2 3 1 4 c] [--quick] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from deltamic_core.fit import FitConfig, Fitter
from deltamic_core.io import read_mesh
from deltamic_core.psf import GaussianPSF, MeasuredPSF
from deltamic_core.render import Renderer

REC = Path(__file__).resolve().parents[1] / "src" / "deltamic_core" / "data" / "Sample01_007.rec"

# the clock of the floor, iteration and transform timings: wall time, or with --clock cpu the
# process's CPU time (steadier on a shared, loaded machine; with 2 threads it sums both)
_CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = _CLOCKS["wall"]


def median_time(fn, repeat=3):
    ts = []
    out = None
    for _ in range(repeat):
        t = _clock()
        out = fn()
        ts.append(_clock() - t)
    return statistics.median(ts), out


def floor_seconds(shape, spacing, psf, repeat=5):
    """One rfftn of the image grid padded by the PSF half-extent on every side."""
    ext = psf.extent_um()
    padded = tuple(n + 2 * int(math.ceil(e / s)) for n, s, e in zip(shape, spacing, ext))
    x = torch.zeros(padded, dtype=torch.float32)
    torch.fft.rfftn(x)
    return median_time(lambda: torch.fft.rfftn(x), repeat)[0], padded


def embryo_in_box(shape, spacing, fill=0.85, faces=None):
    """The bundled embryo scaled to fill ``fill`` of the box (largest relative extent);
    ``faces``: then remeshed (the fit's own isotropic remeshing) to about that many faces, to
    time the mesh sizes a fit actually uses."""
    mesh = read_mesh(REC, spacing_um=(1.0, 1.0, 1.0))
    v = mesh.verts
    lo, hi = v.min(0), v.max(0)
    box = np.asarray(shape) * np.asarray(spacing)
    scale = fill * (box / (hi - lo)).min()
    v = (v - (lo + hi) / 2) * scale + box / 2 - np.asarray(spacing) / 2
    mesh = mesh.copy(verts=v)
    if faces:
        from deltamic_core.geometry import remesh
        from deltamic_core.geometry.ops import edge_lengths

        # faces ~ 1 / edge^2 at a fixed area
        mesh = remesh(
            mesh, float(edge_lengths(mesh.verts, mesh.faces).mean()) * math.sqrt(len(mesh.faces) / float(faces))
        )
    return mesh


def observed_image(mesh, shape, spacing, psf):
    """Any plausible image for timing: the mesh rendered, slightly shifted, plus noise."""
    r = Renderer(shape, spacing, psf, route="real" if _real_ok(psf) else "fourier")
    v = torch.as_tensor(mesh.verts * 1.01 - 0.01 * mesh.verts.mean(0), dtype=torch.float32)
    with torch.no_grad():
        img = r.render(v, torch.as_tensor(mesh.faces), torch.as_tensor(mesh.face_intensity(), dtype=torch.float32))
    img = img.numpy().astype(np.float64)
    img = 60 * img / max(np.percentile(img, 99.9), 1e-9) + 5
    return np.random.default_rng(0).poisson(np.clip(img, 0, None)).astype(np.float32)


def _real_ok(psf):
    try:
        Renderer((8, 8, 8), (0.5, 0.25, 0.25), psf, route="real")
        return True
    except ValueError:
        return False


def one_iteration(mesh, image, spacing, psf, route, steps=3):
    """(plan + first step seconds, median step seconds, fitter) at full resolution.

    ``route`` "real-torch": the real-space route with the pure-torch splat of the points (the
    native triangle splat switched off: the previous implementation)."""
    from deltamic_core.render import realspace

    if route == "real-torch":
        realspace.USE_NATIVE = False
        try:
            return one_iteration(mesh, image, spacing, psf, "real", steps)
        finally:
            realspace.USE_NATIVE = True
    # no final membrane re-share inside the timed steps (a rebuild of seconds, timed by "remesh";
    # with 2 timed steps the median was the mean of a rebuild step and an iteration)
    cfg = FitConfig(levels=(1,), iterations=steps + 1, backend="auto", reshare_final_at=0.0)
    fitter = Fitter(image, spacing, mesh, psf, cfg)
    import deltamic_core.render.renderer as rmod

    orig = rmod.Renderer.__init__

    def init(self, *a, **k):
        k.setdefault("route", route)
        orig(self, *a, **k)

    rmod.Renderer.__init__ = init
    try:
        t = _clock()
        fitter.step()
        first = _clock() - t
        ts = []
        for _ in range(steps):
            t = _clock()
            fitter.step()
            ts.append(_clock() - t)
    finally:
        rmod.Renderer.__init__ = orig
    return first, statistics.median(ts), fitter


def transform_fwd_bwd(renderer, mesh):
    v = torch.as_tensor(mesh.verts, dtype=torch.float32)
    f = torch.as_tensor(mesh.faces)
    w = torch.as_tensor(mesh.face_intensity(), dtype=torch.float32)
    vv = v.clone().requires_grad_(True)
    img = renderer.render(vv, f, w)  # warm-up (plans, caches)
    img.sum().backward()

    def fwd():
        return renderer.render(vv, f, w)

    t_f, img = median_time(fwd)
    g = torch.ones_like(img)

    def bwd():
        out = renderer.render(vv, f, w)
        t = _clock()
        out.backward(g)
        return _clock() - t

    t_b = statistics.median([bwd() for _ in range(3)])
    return t_f, t_b


def confocal_measured_psf(spacing_psf=(0.1, 0.04, 0.04), shape=(48, 64, 64)):
    """A confocal PSF (NA 1.1 water, 488/525 nm, 1 AU) from psfmodels when installed, else the
    Gaussian with the same widths, as a MeasuredPSF."""
    try:
        import psfmodels as pm

        nz, nxy = shape[0], shape[1]
        z = (np.arange(nz) - nz // 2) * spacing_psf[0]
        h = pm.confocal_psf(
            z,
            nx=nxy + 1,
            dxy=spacing_psf[1],
            ex_wvl=0.488,
            em_wvl=0.525,
            pinhole_au=1.0,
            NA=1.1,
            ni0=1.33,
            ni=1.33,
            ns=1.33,
        )
        h = np.asarray(h)[:, :nxy, :nxy]
        source = "psfmodels.confocal_psf"
    except Exception as exc:  # noqa: BLE001 - the fallback is reported
        ax = [np.fft.fftshift(np.fft.fftfreq(n, d=1.0 / (n * s))) for n, s in zip(shape, spacing_psf)]
        Z, Y, X = np.meshgrid(*ax, indexing="ij")
        h = np.exp(-0.5 * ((Z / 0.3) ** 2 + (Y / 0.09) ** 2 + (X / 0.09) ** 2))
        source = f"Gaussian 0.3/0.09/0.09 (psfmodels unavailable: {exc})"
    h = np.clip(h, 0, None)
    h[h < 1e-4 * h.max()] = 0
    return MeasuredPSF(np.fft.ifftshift(h), spacing_psf), source


def goal2(args):
    print("\n== goal 2: one full-resolution iteration vs the floor (embryo mesh filling the box)")
    psf = GaussianPSF((0.45, 0.16, 0.16)).requires_grad_(False)
    sizes = [(64, 64, 64)] if args.quick else [(128, 128, 128), (256, 512, 512)]
    for shape in sizes:
        spacing = (0.25, 0.25, 0.25) if shape[0] == shape[1] else (0.5, 0.25, 0.25)
        mesh = embryo_in_box(shape, spacing, faces=args.goal2_faces)
        image = observed_image(mesh, shape, spacing, psf)
        floor, padded = floor_seconds(shape, spacing, psf)
        print(
            f"{shape} voxels of {spacing} um, PSF sigma {tuple(psf.sigma_um.tolist())}, {len(mesh.faces)} faces; "
            f"floor (rfftn {padded}) {1e3 * floor:.1f} ms"
        )
        routes = ["real", "real-torch", "fourier"] if shape[0] <= 128 else ["real"]
        for route in routes:
            first, step, fitter = one_iteration(mesh, image, spacing, psf, route)
            r = fitter.renderer
            extra = (
                f"{r._real.last_n_points} points, window {r._real.window}"
                if r.route == "real"
                else f"band {len(r.band)}, oversampling {r.oversampling}, backend {r.backend_name}"
            )
            t_f, t_b = transform_fwd_bwd(r, mesh)
            print(
                f"  {route:>7}: iteration {step:.3f} s = {step / floor:.1f} x floor (first step incl. plan {first:.2f} s); "
                f"transform fwd {t_f:.3f} s, bwd {t_b:.3f} s = {t_b / t_f:.2f} x fwd; {extra}"
            )


def goal3(args):
    print("\n== goal 3: undersampled PSFs, 4-cell-sized embryo grid")
    shape = (36, 100, 64) if args.quick else (73, 202, 130)
    spacing = (0.5, 0.25, 0.25)
    mesh = embryo_in_box(shape, spacing, faces=args.goal3_faces)
    measured, source = confocal_measured_psf()
    cases = [
        ("narrow Gaussian 0.3/0.09/0.09", GaussianPSF((0.3, 0.09, 0.09)).requires_grad_(False)),
        ("fit start Gaussian 0.35/0.12/0.12", GaussianPSF((0.35, 0.12, 0.12)).requires_grad_(False)),
        (f"MeasuredPSF ({source}, fwhm {tuple(round(x, 3) for x in measured.fwhm_um())})", measured),
    ]
    cases = [c for c, key in zip(cases, ["narrow", "start", "measured"]) if key in args.goal3_cases]
    for name, psf in cases:
        image = observed_image(mesh, shape, spacing, GaussianPSF((0.3, 0.09, 0.09)))
        floor, padded = floor_seconds(shape, spacing, psf)
        print(f"{name}: {shape} voxels, {len(mesh.faces)} faces; floor {1e3 * floor:.1f} ms (rfftn {padded})")
        # MeasuredPSF: "real" is the native low-rank separable table splat, "real-torch" the
        # pure-torch dense trilinear table (what "real" was before it)
        for route in args.goal3_routes:
            from deltamic_core.render import realspace

            realspace.USE_NATIVE = route != "real-torch"
            try:
                t = time.perf_counter()
                r = Renderer(shape, spacing, psf, route=route.split("-")[0])
                if r.route == "fourier":
                    r.band  # noqa: B018
                plan = time.perf_counter() - t
            finally:
                realspace.USE_NATIVE = True
            first, step, fitter = one_iteration(mesh, image, spacing, psf, route, steps=2)
            rr = fitter.renderer
            if rr.route == "real":
                k = rr._real.kernel
                extra = f"{rr._real.last_n_points} points, window {rr._real.window}, {type(k).__name__}"
                if isinstance(k, realspace.LowRankTableKernel):
                    extra += f" rank {k.rank} (max error {k.max_error:.1e} of peak), terms' window {k.effective_window():.0f}"
            else:
                extra = f"band {len(rr.band)}, oversampling {rr.oversampling}, backend {rr.backend_name}"
            print(
                f"  {route:>10}: plan {plan:.2f} s, iteration {step:.3f} s = {step / floor:.1f} x floor "
                f"(route {rr.route}); {extra}",
                flush=True,
            )


def goal1(args):
    print("\n== goal 1 (proxy): embryo fit at the accuracy issue's effort vs seeded watershed, same image")
    image, spacing, sigma, init, t_ws = _goal1_problem()
    shape = tuple(image.shape)
    its = (20, 20, 20) if args.quick else (80, 120, 100)
    import deltamic_core.render.renderer as rmod

    orig = rmod.Renderer.__init__
    for route in args.goal1_routes:

        def init_(self, *a, _route=route, **k):
            k.setdefault("route", _route)  # "auto" is the default: every level chooses
            orig(self, *a, **k)

        rmod.Renderer.__init__ = init_
        try:
            fitter = Fitter(image, spacing, init, GaussianPSF(sigma), FitConfig(iterations=its))
            t = _clock()
            fitter.run()
            t_fit = _clock() - t
        finally:
            rmod.Renderer.__init__ = orig
        tim = fitter.result().timings if hasattr(fitter.result(), "timings") else {}
        print(
            f"  {shape} voxels, iterations {its}, route {route}: fit {t_fit:.1f} s, "
            f"watershed {t_ws:.1f} s: {t_fit / t_ws:.1f} x watershed; timings {tim}"
        )


def _goal1_problem():
    """The goal-1 proxy's image (4-cell-sized embryo, Gaussian 0.35/0.12/0.12 um), its seeds'
    spheres and the watershed's seconds (same image)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bfe", Path(__file__).with_name("bench_fit_embryo.py"))
    bfe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bfe)
    from deltamic_core.geometry import measure, seed_spheres
    from deltamic_core.pipeline import estimate_seed_radii

    spacing = (0.5, 0.25, 0.25)
    sigma = (0.35, 0.12, 0.12)
    truth = read_mesh(REC, spacing_um=0.25)
    lo = truth.verts.min(0) - 3.0
    truth = truth.copy(verts=truth.verts - lo)
    shape = tuple(int(np.ceil(e / s)) for e, s in zip(truth.verts.max(0) + 3.0, spacing))
    image = observed_image(truth, shape, spacing, GaussianPSF(sigma))
    centroids = np.asarray(measure(truth)["centroid"], dtype=np.float64)
    t = _clock()
    bfe.watershed_baseline(image, spacing, (0.0, 0.0, 0.0), centroids)
    t_ws = _clock() - t
    radii = estimate_seed_radii(image, spacing, centroids, blur_um=sigma)
    return image, spacing, sigma, seed_spheres(centroids, radii, edge_um=1.0), t_ws


def goal_coarse(args):
    """Coarse levels (BlockAveragedPSF, no alias folding on the Fourier route) of the goal-1
    proxy: one iteration on the real-space route vs the Fourier route, per factor."""
    print("\n== coarse levels of the goal-1 proxy: one iteration, real-space vs Fourier route")
    image, spacing, sigma, init, _ = _goal1_problem()
    import deltamic_core.render.renderer as rmod

    orig = rmod.Renderer.__init__
    for f in (4, 2):
        for route in ("real", "fourier"):

            def init_(self, *a, _route=route, **k):
                k.setdefault("route", _route)
                orig(self, *a, **k)

            rmod.Renderer.__init__ = init_
            try:
                cfg = FitConfig(levels=(f, 1), iterations=(6, 0), coarse_blur=args.coarse_blur)
                fitter = Fitter(image, spacing, init, GaussianPSF(sigma), cfg)
                t = _clock()
                fitter.step()
                first = _clock() - t
                ts = []
                for _ in range(4):
                    t = _clock()
                    fitter.step()
                    ts.append(_clock() - t)
            finally:
                rmod.Renderer.__init__ = orig
            r = fitter.renderer
            extra = (
                f"{r._real.last_n_points} points, window {r._real.window} = {math.prod(r._real.window)}"
                if r.route == "real"
                else f"band {len(r.band)}, oversampling {r.oversampling}, backend {r.backend_name}"
            )
            print(
                f"  factor {f}, grid {r.shape}, {route:>7}: iteration {statistics.median(ts):.3f} s "
                f"(first incl. plan {first:.2f} s); {extra}"
            )


def goal4(args):
    print("\n== goal 4 (proxy, no viewer): napari sample embryo, widget defaults")
    from deltamic_core.fit import FitConfig as FC

    try:
        from deltamic_napari import _sample_data  # noqa: F401
    except Exception:  # noqa: BLE001
        pass
    spacing = (0.5, 0.25, 0.25)
    sigma = (0.6, 0.25, 0.25)
    truth = read_mesh(REC, spacing_um=0.25)
    lo = truth.verts.min(0) - 3.0
    truth = truth.copy(verts=truth.verts - lo)
    shape = tuple(int(np.ceil(e / s)) for e, s in zip(truth.verts.max(0) + 3.0, spacing))
    image = observed_image(truth, shape, spacing, GaussianPSF(sigma))
    from deltamic_core.geometry import measure, seed_spheres

    meas = measure(truth)
    centroids = np.asarray(meas["centroid"], dtype=np.float64)
    init = seed_spheres(centroids, [6.0] * len(centroids), edge_um=1.0)
    fitter = Fitter(image, spacing, init, GaussianPSF(sigma), FC())
    t0 = time.perf_counter()
    res = fitter.step()
    print(f"  image {shape}: first step result {time.perf_counter() - t0:.2f} s after Run (level {res.level})")
    per = {}
    while not fitter.done:
        t = time.perf_counter()
        res = fitter.step()
        per.setdefault(res.level, []).append(time.perf_counter() - t)
    for lvl, ts in per.items():
        print(
            f"  level {lvl}: {len(ts)} steps, {1 / statistics.median(ts):.1f} steps/s (median {statistics.median(ts):.3f} s)"
        )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--goals", nargs="+", default=["2", "3", "1", "4"])
    ap.add_argument(
        "--goal1-routes",
        nargs="+",
        default=["auto"],
        choices=["auto", "real", "fourier"],
        help="renderer routes goal 1 fits with, one fit each (auto: the defaults)",
    )
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--goal3-cases",
        nargs="+",
        default=["narrow", "start", "measured"],
        choices=["narrow", "start", "measured"],
        help="goal 3: the PSFs to run (narrow Gaussian, the fit's start Gaussian, the confocal MeasuredPSF)",
    )
    ap.add_argument(
        "--goal3-routes",
        nargs="+",
        default=["real", "real-torch", "fourier", "auto"],
        choices=["real", "real-torch", "fourier", "auto"],
        help="goal 3: the routes to time (real-torch and fourier are slow on the measured PSF)",
    )
    ap.add_argument(
        "--goal3-faces",
        type=int,
        default=None,
        metavar="N",
        help="goal 3: remesh the embryo to about N faces first (default: the bundled 4,055-face mesh, 1.36 um edges)",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--goal2-faces",
        type=int,
        default=None,
        metavar="N",
        help="goal 2: remesh the embryo to about N faces first (the issue's fit-size meshes: 10000-20000)",
    )
    ap.add_argument("--coarse-blur", type=float, default=FitConfig().coarse_blur, help="goal c: FitConfig.coarse_blur")
    ap.add_argument("--clock", choices=sorted(_CLOCKS), default="wall", help="time the floor and iterations by")
    args = ap.parse_args(argv)
    global _clock
    _clock = _CLOCKS[args.clock]
    torch.set_num_threads(args.threads)
    print(f"threads {torch.get_num_threads()}, clock {args.clock}")
    for g in args.goals:
        {"1": goal1, "2": goal2, "3": goal3, "4": goal4, "c": goal_coarse}[g](args)


if __name__ == "__main__":
    main()
