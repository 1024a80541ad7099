"""Differentiable fluorescence image of triangle meshes: a render plan built once, executed
every iteration.

Image formation
---------------
The microscope image of a fluorophore density u (here: surface densities on the mesh
triangles, optionally plus the indicator of the enclosed volume) is

    I(x) = g * (u conv h)(x) + b,

h the PSF (integrating to 1), g the gain, b the background. The image voxel n has its centre
at x_n = o + n * s (origin o, spacing s). Let P be a periodic box of N voxels (lengths L = N s,
voxel volume v = s_z s_y s_x) containing the image, with voxel (0, 0, 0) at p. If the blurred
object (the mesh grown by the PSF half-extent) fits in P without overlapping its own periodic
copies over the image, the Fourier series of the periodised image gives, at the voxel centres,

    I(p + m s) - b = (g / prod(L)) sum_k U(k) H(k) exp(2 pi i k . m s),    k = j / L,

with U the transform of the object in coordinates relative to p (kernel exp(-2 pi i k.x)),
H the OTF. Since prod(L) = v * prod(N), the sum is exactly ``irfftn(U * H / v, s=N)``
(torch's irfftn carries the 1 / prod(N)). So there is no phase ramp, and no abs(): the
object is real, its half spectrum is Hermitian, and irfftn returns a real image.
Normalisation: the sum of the padded image times v is g * U(0) H(0) = g * (integral of u),
e.g. g * area for a membrane of unit surface density.

Only frequencies where |H| > threshold * max|H| (the "narrow band") are evaluated; the others
are zero.

Undersampled PSFs (|H| still significant at the grid's Nyquist frequency, common laterally):
point samples of the continuous image see every frequency k + j / s at the grid frequency k
(aliasing). The series above then runs over all k = j / L, and the coefficient of the
half-spectrum bin b is the sum of U H over the frequencies j = b (mod N). With
``fold_aliases=True`` (default) the band is taken on an oversampled grid of the same box (the
OTF evaluated up to q times the Nyquist frequency per axis, q the smallest factor where it
falls below the threshold) and folded onto the image grid: the samples are then exact (no
Gibbs ringing, no negative lobes from truncating the spectrum). ``fold_aliases=False`` drops the
frequencies beyond Nyquist instead (the band-limited image).

Numerics: the mesh transform is evaluated for vertices relative to the box centre
c = p + L / 2, which keeps the phases 2 pi k.x about twice smaller (and near zero for an object
in the middle of the box); exp(-2 pi i k . L/2) = (-1)^(j_z + j_y + j_x) restores the transform
relative to p exactly, and is folded into the per-band OTF factor.
"""

from __future__ import annotations

import math
import warnings

import torch

from .._checks import as_tensor, check_faces, check_memory, check_same_device, check_vertices
from ..grid import FFTGrid, GridBand
from . import volume_real
from .plan import PaddedBox, alias_fold, band_from_otf, boundary_otf, check_band_threshold, oversampled_grid, padded_box
from .spectra import face_unit_normals, signed_volume, volume_spectrum_from_parts

_FLOAT_DTYPES = (torch.float32, torch.float64)

# Bytes per (band frequency x face) pair a mesh_ft backend may hold at once, used only when the
# meshft package does not provide its own estimate; the torch backend tiles its work, so the
# true figure is bounded by its tile size, and this keeps the estimate conservative.
_FALLBACK_PAIR_BYTES = 48
_FALLBACK_TILE_PAIRS = 2**22


class Renderer:
    """Render plan: padded FFT box, narrow band and OTF cache for one image geometry and PSF.

    Build it once (it evaluates the OTF on the whole padded grid to choose the band) and call
    :meth:`render` every iteration: per call the work is the mesh transform on the band, one
    scatter into the half spectrum and one inverse real FFT of the padded box.

    Parameters
    ----------
    shape : (3,) int
        Image shape (Z, Y, X) in voxels.
    spacing_um : float or (3,) float
        Voxel size (z, y, x) in micrometres.
    psf : deltamic_core.psf.PSFModel
        PSF model (``otf(grid, dtype, device)``, ``extent_um()``). Its parameters may be
        learnable: when any requires grad (and grad mode is on), the OTF is re-evaluated at
        every render so the image is differentiable w.r.t. them; otherwise it is cached and
        refreshed whenever a parameter or buffer changes in place.
    origin_um : (3,) float
        Centre of image voxel (0, 0, 0) in micrometres, (z, y, x).
    band_threshold : float in [0, 1)
        Keep the frequencies where |OTF| > band_threshold * max|OTF|.
    backend : str
        ``mesh_ft`` backend ("auto", "cpu", "cuda", "nufft", "torch").
    dtype : torch.float32 or torch.float64
        Precision of the transform, the FFT and the returned image.
    device : str or torch.device
        Where the plan lives; inputs must be on this device.
    margin_um : float or (3,) float, optional
        Extra padding beyond the PSF half-extent: lets a mesh stick out of the image by up to
        about this much more before its blur would wrap around the periodic box.
    max_memory_bytes : float, optional
        Refuse plans/renders whose estimated working memory exceeds this (default: 80% of the
        available memory, see :func:`deltamic_core._checks.check_memory`).
    fold_aliases : bool
        Exact point sampling of an undersampled PSF by folding the frequencies beyond the
        grid's Nyquist frequency (see the module docstring); False drops them.
    alias_warning : bool
        Warn (RuntimeWarning) when ``fold_aliases=False`` drops frequencies the OTF still
        passes. False where dropping them is the caller's design (the fitter's coarse levels
        fit a block-averaged image, whose model need not be exact beyond the coarse Nyquist).
    max_oversampling : int
        Largest oversampling factor per axis used to find those frequencies.

    Attributes
    ----------
    grid : FFTGrid
        The padded periodic box (same voxel lattice as the image).
    image_grid : FFTGrid
        The requested image box.
    band : GridBand
        The narrow band: the evaluated frequencies, on the rfft half spectrum of ``band.grid``
        (``grid`` itself, or the oversampled grid of the same box when aliases are folded).
    oversampling : tuple of int
        Oversampling factor (z, y, x) of ``band.grid`` relative to ``grid`` (1 = no aliasing).
    crop : tuple of slice
        ``padded[crop]`` is the image.
    nyquist_otf : float
        max |OTF| on the highest sampled frequency of each axis, relative to max|OTF|; above
        ``band_threshold`` the PSF is undersampled by the voxel grid.
    """

    def __init__(
        self,
        shape,
        spacing_um,
        psf,
        origin_um=(0.0, 0.0, 0.0),
        *,
        band_threshold=1e-3,
        backend: str = "auto",
        dtype=torch.float32,
        device="cpu",
        margin_um=None,
        max_memory_bytes=None,
        fold_aliases: bool = True,
        alias_warning: bool = True,
        max_oversampling: int = 8,
        route: str = "auto",
        real_tol: float = 1e-2,
    ):
        if dtype not in _FLOAT_DTYPES:
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        if not (hasattr(psf, "otf") and hasattr(psf, "extent_um")):
            raise TypeError(
                f"psf must be a deltamic_core.psf.PSFModel (with otf() and extent_um()), got {type(psf).__name__}"
            )
        if not isinstance(backend, str):
            raise TypeError(f"backend must be a string such as 'auto', got {backend!r}")
        if backend != "auto":
            from ..meshft import get_backend

            get_backend(backend)  # unknown/unavailable names fail here, not at the first render
        if max_memory_bytes is not None:
            max_memory_bytes = float(max_memory_bytes)
            if not max_memory_bytes > 0:
                raise ValueError(f"max_memory_bytes must be positive, got {max_memory_bytes}")
        self.psf = psf
        self.dtype = dtype
        self.complex_dtype = dtype.to_complex()
        from .._checks import check_device

        self.device = check_device(device)
        self.backend = backend
        self.max_memory_bytes = max_memory_bytes
        self.band_threshold = check_band_threshold(band_threshold)
        if not isinstance(fold_aliases, bool):
            raise TypeError(f"fold_aliases must be True or False, got {fold_aliases!r}")
        self.fold_aliases = fold_aliases
        self.alias_warning = bool(alias_warning)
        if isinstance(max_oversampling, bool) or not isinstance(max_oversampling, int) or max_oversampling < 1:
            raise ValueError(f"max_oversampling must be an integer >= 1, got {max_oversampling!r}")
        self.max_oversampling = max_oversampling
        if route not in ("auto", "fourier", "real"):
            raise ValueError(f"route must be 'auto', 'fourier' or 'real', got {route!r}")
        if not (isinstance(real_tol, (int, float)) and 0 < real_tol < 1):
            raise ValueError(f"real_tol must be a number in (0, 1), got {real_tol!r}")
        self.route_request = route
        self.real_tol = float(real_tol)
        self._margin_um = margin_um
        self.box: PaddedBox = padded_box(shape, spacing_um, origin_um, psf.extent_um(), margin_um)
        self.grid: FFTGrid = self.box.grid
        self.image_grid: FFTGrid = self.box.image
        self.crop = self.box.crop
        # The plan evaluates the OTF on the whole padded half spectrum: refuse absurd grids
        # before that allocation (and again for each oversampled grid, in update_band).
        check_memory(self._grid_bytes(plan=True), "the render plan (padded FFT grid)", self.max_memory_bytes)
        self._drop_fourier_plan()
        self._last_backend = None
        self._real = None
        self._probe = torch.zeros(0, device=self.device)
        self.route = "fourier"
        # the real-space route is considered whatever fold_aliases says: its image is the exact
        # one (every alias included), and where the Fourier route drops the aliases (a coarse
        # level's block-averaged PSF, fold_aliases=False) RealPlan's own rule for unfolded
        # renderers decides whether it is preferred
        if route != "fourier":
            from .route import real_plan

            self._real = real_plan(self, required=(route == "real"))
        if self._real is not None and (route == "real" or self._real.preferred):
            self.route = "real"
            self._set_wrap_bounds()
        else:
            self._real = None
            self.update_band(_stacklevel=3)

    # ------------------------------------------------------------------ plan / band
    @property
    def shape(self) -> tuple[int, int, int]:
        return self.image_grid.shape

    @property
    def spacing_um(self) -> tuple[float, float, float]:
        return self.image_grid.spacing_um

    @property
    def origin_um(self) -> tuple[float, float, float]:
        return self.image_grid.origin_um

    @property
    def backend_name(self) -> str:
        """The mesh_ft backend that ``backend`` resolves to on this device (e.g. "cpu"; with
        "auto", the one the last render used, since the choice depends on the face count)."""
        if self._last_backend is not None:
            return self._last_backend
        if self.route == "real":
            return "realspace"
        try:
            from ..meshft._registry import resolve

            return resolve(self.backend, self.device, announce=False)[0]
        except Exception:  # noqa: BLE001 - reporting only
            return self.backend

    # The Fourier plan (band, oversampling, alias fold) is built lazily on the real-space route:
    # spectrum(), a volume term or reading these attributes builds it on first use.
    @property
    def band(self) -> GridBand:
        if self._band is None:
            self._build_band(_stacklevel=3)
        return self._band

    @property
    def oversampling(self) -> tuple[int, int, int]:
        if self._band is None:
            self._build_band(_stacklevel=3)
        return self._oversampling

    @property
    def nyquist_otf(self) -> float:
        if self._band is None:
            self._build_band(_stacklevel=3)
        return self._nyquist_otf

    def _set_wrap_bounds(self) -> None:
        blur = tuple(float(b) for b in self.psf.extent_um())
        self.box = PaddedBox(self.box.image, self.box.grid, self.box.lo, blur)
        self._wrap_lo, self._wrap_hi = self.box.wrap_free_bounds()

    def update_band(self, threshold=None, *, relax: float = 1.0, _stacklevel: int = 2):
        """Recompute the narrow band from the PSF's current OTF (call it after the PSF
        parameters changed).

        On the real-space route (``route == "real"``) this refreshes the real-space kernel
        instead and drops the Fourier plan (rebuilt on its next use); it then returns None.

        Parameters
        ----------
        threshold : float in [0, 1), optional
            New relative threshold (default: the current ``band_threshold``); it becomes the
            renderer's ``band_threshold``.
        relax : float >= 1
            Keep |OTF| > threshold / relax * max|OTF|: a margin so that a PSF that keeps
            changing between band updates stays covered.

        Returns
        -------
        GridBand (None on the real-space route)
        """
        if self.route == "real":
            if threshold is not None:
                self.band_threshold = check_band_threshold(threshold)
            from .route import real_plan

            self._real = real_plan(self, required=True)
            self._set_wrap_bounds()
            self._drop_fourier_plan()
            return None
        return self._build_band(threshold, relax=relax, _stacklevel=_stacklevel + 1)

    def _drop_fourier_plan(self) -> None:
        """Forget the band and the cached OTF on it (rebuilt on their next use)."""
        self._band = None
        self._otf_key = None
        self._otf_band = None

    def _build_band(self, threshold=None, *, relax: float = 1.0, _stacklevel: int = 2) -> GridBand:
        """The Fourier route of :meth:`update_band` (same parameters): the band from the OTF."""
        if threshold is not None:
            self.band_threshold = check_band_threshold(threshold)
        try:
            relax = float(relax)
        except (TypeError, ValueError):
            raise TypeError(f"relax must be a number >= 1, got {relax!r}") from None
        if not (math.isfinite(relax) and relax >= 1):
            raise ValueError(f"relax must be a finite number >= 1, got {relax}")
        thr = self.band_threshold / relax
        fine, otf, edges = self._oversampled_otf(thr)
        self._band = band_from_otf(fine, otf, thr)
        del otf
        self._warn_band_coverage(max(edges), thr, _stacklevel + 1)
        self._set_band_tensors()
        self._otf_key = None
        self._otf_band = None
        return self._band

    def _oversampled_otf(self, thr: float):
        """The OTF on the image box, oversampled along each axis (with ``fold_aliases``) until
        its values on the grid's boundary fall to ``thr`` or ``max_oversampling`` is reached;
        sets ``_oversampling`` and ``_nyquist_otf``. Returns (grid, OTF, boundary values)."""
        q = [1, 1, 1]
        while True:
            fine = oversampled_grid(self.grid, q)
            check_memory(
                self._grid_bytes(plan=True, grid=fine),
                f"the render plan (OTF on a {fine.shape} grid)",
                self.max_memory_bytes,
            )
            with torch.no_grad():
                otf = self.psf.otf(fine, dtype=torch.float64, device=self.device)
            if tuple(otf.shape) != fine.rfft_shape:
                raise ValueError(
                    f"psf.otf returned shape {tuple(otf.shape)}, expected the rfft shape {fine.rfft_shape}"
                )
            edges = boundary_otf(otf)
            if q == [1, 1, 1]:
                self._nyquist_otf = max(edges)
            if not self.fold_aliases:
                break
            grow = [a for a in range(3) if edges[a] > thr and q[a] < self.max_oversampling]
            if not grow:
                break
            for a in grow:
                q[a] += 1
            del otf
        self._oversampling = tuple(q)
        return fine, otf, edges

    def _warn_band_coverage(self, edge: float, thr: float, stacklevel: int) -> None:
        """Warn when frequencies the OTF still passes (boundary value ``edge``) are dropped."""
        if not self.fold_aliases and self.alias_warning and self._nyquist_otf > max(self.band_threshold, 1e-2):
            warnings.warn(
                f"the PSF is undersampled by spacing_um={self.spacing_um}: |OTF| reaches "
                f"{self._nyquist_otf:.2g} of its maximum at the Nyquist frequency; with fold_aliases=False the "
                "image is band-limited to the grid (frequencies beyond Nyquist are dropped)",
                RuntimeWarning,
                stacklevel=stacklevel,
            )
        elif self.fold_aliases and edge > thr:
            warnings.warn(
                f"the OTF is still {edge:.2g} of its maximum at {self.max_oversampling}x the Nyquist "
                f"frequency of spacing_um={self.spacing_um}: frequencies beyond are dropped (raise "
                "max_oversampling or band_threshold)",
                RuntimeWarning,
                stacklevel=stacklevel,
            )

    def _set_band_tensors(self) -> None:
        """The per-render tensors of the band on the device: gather/fold indices, frequencies,
        the box-centre sign, |k|^2 and the box centre."""
        fold = alias_fold(self._band, self.grid, mirror=self.fold_aliases)
        self._set_wrap_bounds()
        dev = self.device
        self._gather = self.band.flat_index(dev)  # band -> OTF grid (the oversampled grid)
        self._fold = fold.to(dev)
        # on the image grid itself every band entry has its own bin: one index_put, no gathers
        self._identity = self._oversampling == (1, 1, 1) and len(fold.mirror_sel) == 0
        self._direct_all = len(fold.direct_sel) == len(self.band)  # then direct_sel is arange(K)
        self._freqs = self.band.freqs(dtype=self.dtype, device=dev).contiguous()
        modes = self.band.signed_modes(dev)
        # exp(-2 pi i k . L/2) = (-1)^(sum of mode numbers): undoes the box-centre shift
        self._sign = (1 - 2 * (modes.sum(dim=1) % 2)).to(self.dtype)
        k2 = (self._freqs.to(torch.float64) ** 2).sum(dim=1)
        self._dc = k2 == 0
        self._k2 = torch.where(self._dc, torch.ones_like(k2), k2).to(self.dtype)
        self._centre = torch.tensor(
            [p + 0.5 * L for p, L in zip(self.grid.origin_um, self.grid.extent_um)], dtype=torch.float64, device=dev
        )

    # ------------------------------------------------------------------ OTF
    def _psf_state_key(self):
        tensors = list(self.psf.parameters()) + list(self.psf.buffers()) if hasattr(self.psf, "parameters") else []
        return tuple((id(t), t._version, t.data_ptr()) for t in tensors)

    def _psf_needs_grad(self) -> bool:
        if not torch.is_grad_enabled() or not hasattr(self.psf, "parameters"):
            return False
        return any(p.requires_grad for p in self.psf.parameters())

    def _band_otf(self) -> torch.Tensor:
        """OTF on the band times (-1)^modes / voxel volume: the factor that turns the centred
        object spectrum into the image's half-spectrum coefficients."""
        scale = self._sign / self.grid.voxel_volume_um3
        if self._psf_needs_grad():
            otf = self.psf.otf(self.band.grid, dtype=self.dtype, device=self.device)
            return otf.reshape(-1)[self._gather] * scale
        key = self._psf_state_key()
        if self._otf_band is None or key != self._otf_key:
            with torch.no_grad():
                otf = self.psf.otf(self.band.grid, dtype=self.dtype, device=self.device)
                self._otf_band = (otf.reshape(-1)[self._gather] * scale).contiguous()
            self._otf_key = key
        return self._otf_band

    def otf_band(self) -> torch.Tensor:
        """(K,) the PSF's OTF at the band frequencies (differentiable when the PSF is)."""
        return self._band_otf() * (self._sign * self.grid.voxel_volume_um3)

    # ------------------------------------------------------------------ memory
    def _grid_bytes(self, plan: bool = False, grid: FFTGrid | None = None) -> float:
        r = torch.finfo(self.dtype).bits // 8
        c = 2 * r
        if plan:
            # OTF evaluated in float64 with a few full-size temporaries, plus the band mask
            return math.prod((grid or self.grid).rfft_shape) * (4 * 8 + 1)
        n = math.prod(self.grid.shape)
        n_r = math.prod(self.grid.rfft_shape)
        # forward: scatter target + irfftn work buffer + real output; backward: the same again
        total = 2 * (2 * c * n_r + r * n)
        band_grid = getattr(getattr(self, "_band", None), "grid", self.grid)
        if any(p.requires_grad for p in getattr(self.psf, "parameters", lambda: [])()):
            total += 2 * c * math.prod(band_grid.rfft_shape)  # OTF re-evaluated in the graph
        return total

    def memory_estimate_bytes(self, n_faces: int = 0, n_verts: int = 0, *, volume: bool = False) -> float:
        """Working memory (bytes) of one render + backward for a mesh of the given size: padded
        grid complex buffers, band spectrum and OTF factor, and the mesh transform's
        temporaries (one mesh_ft call, four with the volume term).
        """
        r = torch.finfo(self.dtype).bits // 8
        c = 2 * r
        if self.route == "real" and (not volume or volume_real.supports(self._real)):
            return float(self._real.memory_estimate_bytes(n_faces, n_verts)) * (2 if volume else 1)
        K = len(self.band)
        calls = 4 if volume else 1
        band = K * (3 * r + 8 + 2 * c) + 2 * calls * K * c  # freqs, index, otf, spectra (+grads)
        mesh = self._meshft_bytes(int(n_faces), int(n_verts), K) * calls
        return float(self._grid_bytes() + band + mesh)

    def _meshft_bytes(self, n_faces: int, n_verts: int, K: int) -> float:
        if n_faces == 0:
            return 0.0
        try:
            from .. import meshft

            est = getattr(meshft, "memory_estimate_bytes", None)
            if est is not None:
                return float(est(n_faces, K, dtype=self.dtype, backend=self.backend, device=self.device))
        except Exception:  # noqa: BLE001 - fall back to the conservative estimate below
            pass
        r = torch.finfo(self.dtype).bits // 8
        per_mesh = n_faces * 40 * r + n_verts * 12 * r
        return per_mesh + min(K * n_faces, _FALLBACK_TILE_PAIRS) * _FALLBACK_PAIR_BYTES

    # ------------------------------------------------------------------ execution
    def _prepare(self, verts, faces, weights):
        if isinstance(verts, torch.Tensor):  # before any value is read from a foreign device
            check_same_device([("verts", verts), (f"the renderer (device={self.device})", self._probe)])
        v = check_vertices(verts, "verts")
        if v.device != self.device:
            v = v.to(self.device)
        # array-likes are placed on the plan's device; tensors must already be there
        faces = as_tensor(faces, "faces", device=None if isinstance(faces, torch.Tensor) else self.device)
        check_same_device([("faces", faces), ("verts", v)])
        if weights is not None:
            if not isinstance(weights, torch.Tensor):
                weights = as_tensor(weights, "weights", device=self.device)
            check_same_device([("weights", weights), ("verts", v)])
            if weights.dtype.is_floating_point:
                weights = weights.to(self.dtype)
        self.check_inside(v)
        n_faces = int(faces.shape[0]) if faces.ndim == 2 else 0
        return v, faces, weights, n_faces

    def check_inside(self, v: torch.Tensor) -> None:
        """Raise ValueError if vertices ``v`` (um) leave the box the padded FFT holds wrap-free."""
        with torch.no_grad():
            lo = v.min(dim=0).values.to(torch.float64).cpu().tolist()
            hi = v.max(dim=0).values.to(torch.float64).cpu().tolist()
        for axis, name in enumerate("zyx"):
            a, b = self._wrap_lo[axis], self._wrap_hi[axis]
            if lo[axis] <= a or hi[axis] >= b:
                raise ValueError(
                    f"verts extend over {name} in [{lo[axis]:.4g}, {hi[axis]:.4g}] um, outside ({a:.4g}, {b:.4g}) um "
                    f"where the padded FFT box can hold the blurred mesh: its image would wrap around. "
                    "Crop the mesh, enlarge the image, or pass a larger margin_um"
                )

    def _backend_for(self, n_faces: int) -> str:
        """The mesh_ft backend for a mesh of ``n_faces``: an explicit choice is kept; "auto"
        takes the approximate NUFFT backend on the CPU when the exact cost (band frequencies x
        faces) is large (see :func:`deltamic_core.meshft.nufft_backend.prefer_nufft`)."""
        if self.backend != "auto":
            return self.backend
        from ..meshft._registry import resolve
        from ..meshft.nufft_backend import prefer_nufft

        if prefer_nufft(self.device, len(self.band), n_faces):
            return "nufft"
        # the native kernel (compiled on first use), or where it cannot be had, the NUFFT
        return resolve("auto", self.device, band=True)[0]

    def _freqs_arg(self, backend: str):
        """The band as the backend wants it: a precomputed (K, 3) tensor, or the GridBand for
        backends that exploit the grid structure."""
        if backend == "auto":
            return self._freqs
        from ..meshft import get_backend

        return self.band if getattr(get_backend(backend), "needs_band", False) else self._freqs

    def _centred_spectrum(self, v, faces, weights, volume_weight):
        from ..meshft import mesh_ft
        from ..meshft._registry import resolve

        self.band  # noqa: B018 - builds the Fourier plan on first use (lazy on the real-space route)
        vc = (v.to(torch.float64) - self._centre).to(self.dtype)
        backend = self._backend_for(faces.shape[0])
        self._last_backend = resolve(backend, self.device, announce=False)[0]
        freqs = self._freqs_arg(backend)
        # a volume term alone (interior stain: every membrane weight 0) skips the surface transform
        surface = _is_zero(volume_weight) or not _all_zero(weights)
        spec = mesh_ft(vc, faces, freqs, weights, backend=backend) if surface else 0.0
        if not _is_zero(volume_weight):
            faces_t = faces.long()
            normals = face_unit_normals(vc, faces_t)
            if torch.is_tensor(volume_weight) and volume_weight.ndim == 1:
                # per-face signed weights: sum_c w_c chi_c of several regions (a face between
                # regions l1 -> l2, normal from l1 into l2, carries w_l1 - w_l2)
                if volume_weight.shape[0] != faces_t.shape[0]:
                    raise ValueError(
                        f"volume_weight per face must have {faces_t.shape[0]} values, got {volume_weight.shape[0]}"
                    )
                vw = volume_weight.to(device=vc.device, dtype=normals.dtype)
                normals = normals * vw[:, None]
                vol = _weighted_signed_volume(vc, faces_t, vw)
                factor = 1.0
            else:
                vol = signed_volume(vc, faces_t)
                factor = volume_weight
            parts = [mesh_ft(vc, faces_t, freqs, normals[:, a].contiguous(), backend=backend) for a in range(3)]
            chi = volume_spectrum_from_parts(parts, self._freqs, self._k2, self._dc, vol)
            spec = spec + (chi if isinstance(factor, float) and factor == 1.0 else factor * chi)
        return spec

    def spectrum(self, verts, faces, weights=None, *, volume_weight=0.0) -> torch.Tensor:
        """Object spectrum on the band.

        Parameters
        ----------
        verts : (V, 3) float tensor, um, (z, y, x)
        faces : (F, 3) int tensor
        weights : (F,) float tensor, optional
            Surface density (intensity per um^2) of each triangle; default 1.
        volume_weight : float or tensor
            Density (per um^3) of the enclosed volume (needs a closed, outward-oriented mesh).

        Returns
        -------
        (K,) complex tensor: U(k) at ``band.freqs()``, for coordinates relative to the padded
        box origin ``grid.origin_um``. Times ``otf_band()`` / voxel volume, folded onto the
        half spectrum of ``grid`` (identity without aliasing), irfftn turns it into the padded
        image.
        """
        v, faces, weights, n_faces = self._prepare(verts, faces, weights)
        self._check_render_memory(n_faces, v.shape[0], volume_weight)
        return self._centred_spectrum(v, faces, weights, volume_weight) * self._sign

    def render(self, verts, faces, weights=None, *, gain=1.0, background=0.0, volume_weight=0.0) -> torch.Tensor:
        """Microscope image of the mesh.

        Parameters
        ----------
        verts : (V, 3) float tensor, um, (z, y, x)
            Vertex positions (cast to the renderer's dtype); differentiable.
        faces : (F, 3) int tensor
        weights : (F,) float tensor, optional
            Surface density of each triangle (1 = one membrane, 2 = two apposed membranes);
            differentiable.
        gain : float or tensor
            Multiplies the blurred object; differentiable.
        background : float or tensor (broadcastable to the image)
            Added to the image; differentiable.
        volume_weight : float or tensor
            Density of the enclosed volume (luminal/cytoplasmic signal); 0 skips the three
            extra transforms it costs. A scalar needs outward normals; an (F,) tensor gives each
            face a signed weight instead (see :func:`deltamic_core.fit.fitter.volume_face_weights`:
            w_l1 - w_l2 for a face whose normal points from region l1 into l2, which renders
            every labelled region with its own density whatever the winding convention).

        Returns
        -------
        (Z, Y, X) tensor of the renderer's dtype: g * (u conv h)(x_n) + b at the voxel
        centres x_n = origin_um + n * spacing_um.
        """
        v, faces, weights, n_faces = self._prepare(verts, faces, weights)
        self._check_render_memory(n_faces, v.shape[0], volume_weight)
        if self.route == "real" and (_is_zero(volume_weight) or volume_real.supports(self._real)):
            # the Fourier route's transform checks these; the splat indexes with them directly
            faces = check_faces(faces, v.shape[0], "faces")
            if weights is not None and (weights.ndim != 1 or weights.shape[0] != n_faces):
                raise ValueError(
                    f"weights must have shape (F,) = ({n_faces},), one intensity per face, got {tuple(weights.shape)}"
                )
            image = self._real_image(v, faces, weights, volume_weight)
            self._last_backend = "realspace"
            if not (isinstance(gain, (int, float)) and gain == 1):
                image = image * gain
            if not (isinstance(background, (int, float)) and background == 0):
                image = image + background
            return image
        coeffs = self._centred_spectrum(v, faces, weights, volume_weight) * self._band_otf()
        if not (isinstance(gain, (int, float)) and gain == 1):
            coeffs = coeffs * gain
        # in place on a fresh buffer: autograd-safe, no copy
        half = torch.zeros(math.prod(self.grid.rfft_shape), dtype=coeffs.dtype, device=coeffs.device)
        fold = self._fold
        if self._identity:
            half.index_put_((fold.direct_bin,), coeffs)
        else:
            # aliases of one bin add up; frequencies with k_x < 0 enter as conjugates
            half.index_add_(0, fold.direct_bin, coeffs if self._direct_all else coeffs[fold.direct_sel])
            if len(fold.mirror_sel):
                half.index_add_(0, fold.mirror_bin, coeffs[fold.mirror_sel].conj())
        half = half.reshape(self.grid.rfft_shape)
        padded = torch.fft.irfftn(half, s=self.grid.shape)
        image = padded[self.crop].contiguous()  # a plain array for callers (view(), numpy, I/O)
        if not (isinstance(background, (int, float)) and background == 0):
            image = image + background
        return image

    def _real_image(self, v, faces, weights, volume_weight):
        """The real-space route's image: the membrane splat (skipped when every weight is 0)
        plus the volume term's (:mod:`.volume_real`)."""
        if _is_zero(volume_weight):
            return self._real.render(v, faces, weights)
        image = volume_real.volume_image(self._real, v, faces, volume_weight)
        if not _all_zero(weights):
            image = image + self._real.render(v, faces, weights)
        return image

    def _check_render_memory(self, n_faces, n_verts, volume_weight) -> None:
        key = (n_faces, n_verts, _is_zero(volume_weight))
        if getattr(self, "_mem_ok", None) == key:
            return
        need = self.memory_estimate_bytes(n_faces, n_verts, volume=not _is_zero(volume_weight))
        check_memory(need, f"rendering {n_faces} faces on a {self.grid.shape} padded grid", self.max_memory_bytes)
        self._mem_ok = key

    def __repr__(self) -> str:
        return (
            f"Renderer(shape={self.shape}, spacing_um={self.spacing_um}, origin_um={self.origin_um}, "
            f"padded={self.grid.shape}, route={self.route!r}, "
            + (f"oversampling={self._oversampling}, band={len(self._band)}, " if self._band is not None else "")
            + f"dtype={self.dtype}, backend={self.backend_name!r})"
        )


def _weighted_signed_volume(verts, faces, w):
    """sum_t w_t * (signed volume of the tetrahedron (0, v0, v1, v2)), float64 sums."""
    v = verts.to(torch.float64)
    a, b, c = v[faces[:, 0]], v[faces[:, 1]], v[faces[:, 2]]
    return ((a * torch.linalg.cross(b, c, dim=1)).sum(dim=1) * w.to(torch.float64)).sum() / 6.0


def _all_zero(weights) -> bool:
    """True for a face-weight tensor of zeros that needs no gradient (its transform is 0)."""
    return weights is not None and not weights.requires_grad and not bool((weights != 0).any())


def _is_zero(x) -> bool:
    return isinstance(x, (int, float)) and x == 0
