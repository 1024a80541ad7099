"""The step-by-step shape-inference engine.

A :class:`Fitter` deforms a triangle mesh (one or several cells) until its rendered image,
``gain * (membrane density conv PSF) + background``, matches the observed stack. It is a
state machine driven one step at a time (a GUI worker thread or a CLI loop calls
:meth:`Fitter.step` or :meth:`Fitter.run`), with:

- coarse-to-fine levels: the image block-averaged by each factor of ``config.levels`` (voxel
  size scaled, grid origin moved to the block centres), a renderer plan per level;
- the large-steps preconditioner: the optimiser moves ``u = (I + lambda L)^p x`` and the
  vertices are recovered by a sparse Cholesky solve, rebuilt whenever the topology changes
  (remeshing, level change);
- gain and background eliminated in closed form every step (or learnt);
- optional PSF learning with its own Adam;
- rollback: a step whose loss, gradient or new vertices are not finite is undone (vertices and
  every optimiser state restored) and the step size halved; after ``max_failures``
  consecutive failures the fit raises. A NaN mesh is never returned.
"""

from __future__ import annotations

import bisect
import copy
import dataclasses
import math
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .._cancel import cancellable, checkpoint
from .._checks import check_device, check_image, check_not_constant, check_spacing, check_vector3
from ..geometry.ops import edge_lengths
from ..mesh import Mesh
from .config import FitConfig
from .levels import BlockAveragedPSF, block_average, gaussian_blur
from .losses import (
    FieldStats,
    ObservedStats,
    _quantiles,
    intensity_weight,
    poisson_nll,
    solve_photometric,
    solve_photometric_field,
    solve_two_levels,
    weighted_mse,
)
from .optim import ParamAdam, VertexAdam
from .precondition import LaplacianPreconditioner

__all__ = ["Fitter", "StepResult", "FitResult", "FitDivergedError", "FitCancelled"]


class FitDivergedError(RuntimeError):
    """Raised when too many consecutive steps had to be rolled back."""


class FitCancelled(RuntimeError):
    """Raised by :meth:`Fitter.step` after :meth:`Fitter.cancel`: the step was abandoned between
    two of its stages and the fit's state is the one before it."""


@dataclass
class StepResult:
    """What one :meth:`Fitter.step` produced.

    Attributes
    ----------
    iteration : int
        Global count of accepted steps so far (over all levels).
    loss : float
        Loss of the vertices *before* this step's update (NaN when ``rolled_back``).
    verts : (V, 3) float64 ndarray, um (z, y, x): the vertices after the step.
    faces : (F, 3) int64 ndarray
    labels : (F, 2) int32 ndarray or None
    psf_params : dict (``psf.as_dict()``)
    gain, background : floats, in the units of the input image
    level : int, index into ``config.levels``
    factor : int, the downsampling factor of that level
    lr : float, the step size used (um)
    rolled_back : bool, True if the step was undone (vertices unchanged)
    remeshed : bool, True if the topology changed after this step
    """

    iteration: int
    loss: float
    verts: np.ndarray
    faces: np.ndarray
    labels: np.ndarray | None
    psf_params: dict
    gain: float
    background: float
    level: int
    factor: int = 1
    lr: float = 0.0
    rolled_back: bool = False
    remeshed: bool = False


def _numpy(obj):
    """``obj`` with every tensor (in dicts, lists, tuples) as a numpy array."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().numpy().copy()
    if isinstance(obj, dict):
        return {k: _numpy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_numpy(v) for v in obj)
    return obj


def _tensors(obj, device):
    """The inverse of :func:`_numpy` (every numpy array a tensor on ``device``)."""
    if isinstance(obj, np.ndarray):
        return torch.as_tensor(obj, device=device)
    if isinstance(obj, dict):
        return {k: _tensors(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_tensors(v, device) for v in obj)
    return obj


def rebuild_grid(shape, spacing_um, voxel_um: float):
    """(spacing, shape) of the label image a shared-membrane rebuild rasterises the cells on:
    voxels of ``max(image voxel, voxel_um)`` per axis, from the same origin, covering at least
    the image's voxel centres (``voxel_um`` <= 0: the image grid itself)."""
    spacing = np.asarray(spacing_um, dtype=np.float64)
    n = np.asarray(shape, dtype=np.int64)
    coarse = np.maximum(spacing, float(voxel_um))
    if np.array_equal(coarse, spacing):
        return tuple(float(s) for s in spacing), tuple(int(k) for k in n)
    # voxel centres origin + i * coarse, i = 0..m-1, up to at least the last image centre
    m = np.ceil((n - 1) * spacing / coarse - 1e-9).astype(np.int64) + 1
    return tuple(float(s) for s in coarse), tuple(int(k) for k in m)


def close_contact_gaps(lab: np.ndarray, spacing_um, gap_um: float) -> np.ndarray:
    """Label image with every background voxel that lies between two different cells, within
    ``gap_um`` of both together (distance to the nearest + to the second-nearest cell), given
    to the nearer cell: the thin gaps left between touching cells' separate surfaces close,
    outer surfaces do not move (a voxel next to one cell only is left alone)."""
    from scipy import ndimage as ndi

    ids = [int(i) for i in np.unique(lab) if i > 0]
    if len(ids) < 2 or gap_um <= 0:
        return lab
    bg = lab == 0
    # only voxels within gap_um of some cell can change: work in their bounding box
    near = ndi.distance_transform_edt(bg, sampling=spacing_um) <= gap_um
    cand = bg & near
    if not cand.any():
        return lab
    idx = np.nonzero(cand)
    box = tuple(slice(max(int(a.min()) - 1, 0), int(a.max()) + 2) for a in idx)
    sub = lab[box]
    d1 = np.full(sub.shape, np.inf, np.float32)
    d2 = np.full(sub.shape, np.inf, np.float32)
    l1 = np.zeros(sub.shape, lab.dtype)
    for i in ids:
        checkpoint()
        m = sub == i
        if not m.any():
            continue
        d = ndi.distance_transform_edt(~m, sampling=spacing_um).astype(np.float32)
        closer = d < d1
        d2 = np.where(closer, d1, np.minimum(d2, d))
        l1 = np.where(closer, lab.dtype.type(i), l1)
        d1 = np.where(closer, d, d1)
    # distances are measured centre to centre: the voxels' own half widths are part of the gap
    fill = (sub == 0) & (d1 + d2 <= gap_um + float(min(spacing_um)))
    if not fill.any():
        return lab
    out = lab.copy()
    out[box] = np.where(fill, l1, sub)
    return out


def volume_face_weights(mesh: Mesh, cell_weights=None) -> np.ndarray:
    """Signed per-face weights that make the renderer's volume term the labelled regions.

    A face whose normal points from region l1 into region l2 carries w[l1] - w[l2] (w of the
    medium 0 is 0, of every cell 1 unless ``cell_weights`` {cell: w} says otherwise), so the
    divergence theorem gives sum_c w_c * indicator(c): the union of the cells for the default,
    whatever the winding convention (.rec meshes, e.g. seed spheres, have normals pointing INTO
    the cells, where an unsigned volume term renders a dark hole), and faces between two cells
    of equal weight cancel. A plain mesh (no labels) is one cell with outward normals.
    """
    if mesh.labels is None:
        return np.ones(len(mesh.faces))
    lab = mesh.labels.astype(np.int64)
    w = np.ones(int(lab.max()) + 1)
    w[0] = 0.0
    for c, value in dict(cell_weights or {}).items():
        if 0 < int(c) < len(w):
            w[int(c)] = float(value)
    return w[lab[:, 0]] - w[lab[:, 1]]


@dataclass
class FitResult:
    """The outcome of a fit (also available mid-fit: the current state)."""

    mesh: Mesh
    loss_history: list
    level_history: list
    timings: dict
    psf_params: dict
    gain: float
    background: float
    backend: str
    iterations: int
    n_rollbacks: int
    converged: bool
    config: dict = field(default_factory=dict)
    volume_level: float | None = None  # the solved cytoplasm level (FitConfig.volume_level="solve")


class _BadStep(Exception):
    pass


@dataclass
class _Level:
    index: int
    factor: int
    shape: tuple
    spacing_um: tuple
    origin_um: tuple
    observed: torch.Tensor  # in loss units (normalised for mse, counts for poisson)
    weight: torch.Tensor | None
    scale: float  # observed_input = observed * scale + offset
    offset: float
    renderer: object
    n_iterations: int
    blur_um: float = 0.0  # the scale-space blur of this stage of the level (FitConfig.coarse_blur)
    base_blur_um: float = 0.0  # the level's own blur (a wider one reaches far membranes first)
    psf: object = None  # the level's PSF model (BlockAveragedPSF on coarse levels)
    photo_stats: object = None  # losses.ObservedStats of observed and weight (made at the first solve)


def _fine_edge(config, spacing_um, face_weights, frozen):
    """``fine_edge_voxels`` x the smallest voxel (um): the coarsest edge the full-resolution
    mesh of a membrane fit keeps when ``target_edge_um`` is None; None where it does not apply
    (interior staining, custom face weights or frozen vertices: they need a fixed topology)."""
    if config.target_edge_um is not None or config.fine_edge_voxels <= 0 or config.volume_weight > 0:
        return None
    if face_weights is not None or frozen is not None:
        return None
    return float(config.fine_edge_voxels) * float(min(spacing_um))


def _checked_arguments(image, spacing_um, origin_um, init_mesh, psf, config, face_weights):
    """Check the Fitter's arguments (in this order); returns (config, spacing_um, origin_um,
    device, image ndarray, face weights or None)."""
    if config is None:
        config = FitConfig()
    if not isinstance(config, FitConfig):
        raise TypeError(f"config must be a FitConfig, got {type(config).__name__}")
    if not isinstance(init_mesh, Mesh):
        raise TypeError(f"init_mesh must be a deltamic_core.mesh.Mesh, got {type(init_mesh).__name__}")
    if not isinstance(psf, torch.nn.Module) or not hasattr(psf, "otf"):
        raise TypeError(f"psf must be a deltamic_core.psf.PSFModel, got {type(psf).__name__}")
    if len(init_mesh.faces) == 0:
        raise ValueError("init_mesh has no faces")
    if not np.all(np.isfinite(init_mesh.verts)):
        raise ValueError("init_mesh.verts contains NaN or Inf")
    img = check_image(image, "image", constant_ok=True)
    if config.loss == "poisson" and img.min() < 0:
        raise ValueError(
            "image has negative values: the Poisson loss needs counts (>= 0); use loss='mse' "
            "or remove the camera offset"
        )
    spacing_um = check_spacing(spacing_um, "spacing_um")
    origin_um = check_vector3(origin_um, "origin_um")
    device = check_device(config.device, "FitConfig.device")
    fw = None
    if face_weights is not None:
        fw = np.asarray(face_weights, dtype=np.float64).reshape(-1)
        if fw.shape != (len(init_mesh.faces),):
            raise ValueError(f"face_weights must have one value per face ({len(init_mesh.faces)}), got {fw.shape}")
        if not np.all(np.isfinite(fw)) or np.any(fw < 0):
            raise ValueError("face_weights must be finite and non-negative")
    check_not_constant(img, "image")
    return config, spacing_um, origin_um, device, img, fw


class Fitter:
    """Fit a mesh to a 3D fluorescence image by differentiable rendering.

    Parameters
    ----------
    image : (Z, Y, X) array or tensor
        The observed stack (any real dtype; raw counts for the Poisson loss).
    spacing_um : float or 3 floats (z, y, x)
        Voxel size in micrometres.
    init_mesh : Mesh
        Initial surface(s), vertices in um (z, y, x). With ``labels`` a multi-cell mesh.
    psf : deltamic_core.psf.PSFModel
        Point-spread function. The fitter works on a deep copy (the caller's model is not
        modified, also with ``learn_psf``); the fitted model is ``Fitter.psf``.
    config : FitConfig, optional
    origin_um : 3 floats
        Position (um) of the centre of voxel (0, 0, 0).
    face_weights : (F,) array, optional
        Membrane intensity per face; default ``init_mesh.face_intensity()`` (1 for outer
        faces, 2 for faces shared by two cells). After a remesh the weights are recomputed
        from the labels (custom weights cannot follow a change of topology).
    voxel_weight : (Z, Y, X) array in [0, 1], optional
        Multiplies the data term per voxel (0 = ignore the voxel), e.g. to leave out the light
        of objects that are not modelled (``pipeline.objects``). Block-averaged on coarse
        levels, where voxels the scale-space blur mixes with ignored ones are ignored too.
    frozen : (V,) bool array, optional
        Vertices of ``init_mesh`` held where they are (e.g. the neighbours of one cell being
        refitted, ``pipeline.cells``); they still render. Needs a fixed topology (no remeshing,
        ``target_edge_um=None`` and ``share_membranes=False``).
    """

    def __init__(
        self,
        image,
        spacing_um,
        init_mesh: Mesh,
        psf,
        config: FitConfig | None = None,
        origin_um=(0.0, 0.0, 0.0),
        face_weights=None,
        voxel_weight=None,
        frozen=None,
    ):
        args = _checked_arguments(image, spacing_um, origin_um, init_mesh, psf, config, face_weights)
        config, self.spacing_um, self.origin_um, self.device, img, fw = args
        self.config = config
        self.dtype = config.torch_dtype
        self._image = torch.as_tensor(img, dtype=torch.float32).to(self.device)
        self.psf = copy.deepcopy(psf).to(self.device)
        self._mesh = init_mesh.copy()
        # the input's own tessellation (seed spheres: set by their radii), the coarsest a
        # coarse level's remesh goes (see _level_edge_um)
        self._init_edge_um = float(np.mean(edge_lengths(init_mesh.verts, init_mesh.faces)))
        self._custom_weights = fw
        self._fine_edge_um = _fine_edge(config, self.spacing_um, fw, frozen)
        self._voxel_weight = None
        if voxel_weight is not None:
            vw = np.asarray(voxel_weight, dtype=np.float32)
            if vw.shape != img.shape:
                raise ValueError(f"voxel_weight must have the image's shape {img.shape}, got {vw.shape}")
            if not np.all(np.isfinite(vw)) or vw.min() < 0 or vw.max() > 1 or vw.max() == 0:
                raise ValueError("voxel_weight must be finite, in [0, 1] and not all 0")
            self._voxel_weight = torch.as_tensor(vw).to(self.device)
        self._frozen = None
        if frozen is not None:
            fz = np.asarray(frozen, dtype=bool).reshape(-1)
            if fz.shape != (len(init_mesh.verts),):
                raise ValueError(f"frozen must have one flag per vertex ({len(init_mesh.verts)}), got {fz.shape}")
            if config.target_edge_um is not None or config.share_membranes:
                raise ValueError("frozen vertices need a fixed topology: target_edge_um=None, share_membranes=False")
            self._frozen = torch.as_tensor(fz, device=self.device)[:, None]
            self._frozen_at = torch.as_tensor(init_mesh.verts, dtype=torch.float64, device=self.device)

        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._cancel = threading.Event()
        self._loading = False  # in load_state: cancel() is kept for the first step
        self._level: _Level | None = None  # the level being fitted (None before the first step)
        self._lr_scale = 1.0
        self._consecutive_failures = 0
        self._n_rollbacks = 0
        self._done = False
        self._converged = False
        self._loss_history: list[float] = []
        self._level_history: list[int] = []  # level index of every accepted step
        self._timings = dict.fromkeys(("setup", "render", "backward", "solve", "remesh", "total"), 0.0)
        self._gain = 1.0
        self._background = 0.0
        self._volume_level = float(config.volume_weight)
        self._backend = config.backend
        self._shared_done = False
        self._zip_pairs: set = set()  # pairs zipped by FitConfig.zip_gap_sigmas
        self._level_rebuilt = False
        self._lambda_mult = 1.0  # FitConfig.subdivide_lambda_factor once the mesh is subdivided
        self._tension_scale = None  # loss per um^2 of membrane on this level (FitConfig.tension)
        self._overlap_log: list = []  # (level, blur um, {cell: model-data correlation}) of each reach check
        self._photo = self._photo_opt = None  # learnt log-gain and background (photometric="learn")
        self._psf_opt = None
        if config.learn_psf:
            params = [p for p in self.psf.parameters() if p.requires_grad]
            if not params:
                raise ValueError("learn_psf=True but the PSF model has no learnable parameters")
            self._psf_opt = ParamAdam(params, lr=config.psf_lr)
        else:
            for p in self.psf.parameters():
                p.requires_grad_(False)

    @property
    def _level_index(self) -> int:
        """Index of the current level in ``config.levels`` (0 before the first step)."""
        return 0 if self._level is None else self._level.index

    @property
    def _level_iter(self) -> int:
        """Accepted steps in the current level (levels run in order, so its entries in the
        level history are the last ones)."""
        if self._level is None:
            return 0
        return len(self._level_history) - bisect.bisect_left(self._level_history, self._level.index)

    # ------------------------------------------------------------------ state access
    @property
    def iteration(self) -> int:
        """Accepted steps so far, over all levels."""
        return len(self._loss_history)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(Z, Y, X) of the full-resolution image being fitted."""
        return tuple(int(n) for n in self._image.shape)

    @property
    def done(self) -> bool:
        """True when every level has run its iterations."""
        return self._done

    @property
    def lr(self) -> float:
        """The current (un-decayed) step size in um after any rollback halvings."""
        index = self._level_index
        start = 1.0 if index == 0 or self._level_rebuilt else self.config.refine_lr_factor
        return self.config.lr * start * self._lr_scale * min(self.spacing_um) * self.config.levels[index]

    @property
    def renderer(self):
        """The current level's :class:`~deltamic_core.render.Renderer` (None before the first
        step); e.g. ``len(fitter.renderer.band)`` is the number of band frequencies."""
        return None if self._level is None else self._level.renderer

    def current_mesh(self) -> Mesh:
        """The current mesh (a copy), vertices in um."""
        with self._lock:
            m = self._mesh.copy()
            if self._level is not None:
                m.verts = self._x.detach().cpu().numpy().astype(np.float64)
            return m

    def set_mesh(self, mesh: Mesh, source=None) -> None:
        """Go on fitting ``mesh`` instead of the current mesh, between two steps (thread-safe:
        waits for a running step), e.g. with cells added or removed (``pipeline.cells``).

        The fit is not restarted: the level, iteration count, step size, PSF and photometric
        state carry on, and ``mesh``'s vertices are taken exactly as given. ``source[i]`` is the
        index of the current vertex that vertex i of ``mesh`` continues (its optimiser moments
        carry over), -1 for a new vertex (fresh moments); None: all new. The convergence window
        restarts (the loss before and after the change are not comparable).
        """
        if not isinstance(mesh, Mesh):
            raise TypeError(f"mesh must be a deltamic_core.mesh.Mesh, got {type(mesh).__name__}")
        if len(mesh.faces) == 0 or not np.all(np.isfinite(mesh.verts)):
            raise ValueError("the new mesh must have faces and finite vertices")
        src = np.full(len(mesh.verts), -1, dtype=np.int64) if source is None else np.asarray(source, np.int64)
        with self._lock:
            if src.shape != (len(mesh.verts),) or src.max(initial=-1) >= len(self._mesh.verts):
                raise ValueError("source must give one current vertex index (or -1) per vertex of the new mesh")
            if self._frozen is not None:
                raise ValueError("a fit with frozen vertices keeps its topology")
            mesh = mesh.copy()
            if self._custom_weights is not None and len(self._custom_weights) != len(mesh.faces):
                self._custom_weights = None
            if self._level is None:  # before the first step: the fit simply starts from it
                self._mesh = mesh
                return
            x0 = torch.as_tensor(mesh.verts, dtype=torch.float64, device=self.device)
            self._level.renderer.check_inside(x0.to(self.dtype))  # ValueError: nothing changed
            old = self._opt
            self._set_topology(mesh, self._level.index)
            self._x = x0
            keep = torch.as_tensor(src >= 0, device=self.device)
            from_old = torch.as_tensor(src[src >= 0], device=self.device)
            self._opt.t = old.t
            self._opt.m1[keep] = old.m1[from_old]
            self._opt.m2[keep] = old.m2[from_old]
            self._recent = []

    def export_state(self) -> dict:
        """The fit's state between two steps, as plain numpy and Python values (picklable
        without torch), for :meth:`load_state` on a Fitter of the same image, PSF model and
        config, e.g. in another process (the napari widget hands a fit started in its thread
        over to its fit server). Needs at least one step; thread-safe (waits for a running step).

        Holds the level, the mesh (with the vertices its preconditioner was built from), the
        optimiser's variables and moments, the step-size scale, the histories, the PSF (and
        its optimiser) and the photometric state: the fit then goes on as it would have here.
        """
        with self._lock:
            if self._level is None:
                raise ValueError("export_state needs a fit that has taken a step")
            opt = self._opt.state()
            return {
                "level": self._level.index,
                "blur_um": self._level.blur_um,
                "base_blur_um": self._level.base_blur_um,
                "mesh": self._mesh.copy(),  # the topology, verts as the preconditioner was built from
                "u": _numpy(self._u),
                "x": _numpy(self._x),
                "opt": {"t": opt["t"], "m1": _numpy(opt["m1"]), "m2": _numpy(opt["m2"]), "lr": opt["lr"]},
                "loss_history": list(self._loss_history),
                "level_history": list(self._level_history),
                "recent": list(self._recent),
                "lr_scale": self._lr_scale,
                "consecutive_failures": self._consecutive_failures,
                "n_rollbacks": self._n_rollbacks,
                "done": self._done,
                "converged": self._converged,
                "timings": dict(self._timings),
                "gain": self._gain,
                "background": self._background,
                "volume_level": self._volume_level,
                "shared_done": self._shared_done,
                "zip_pairs": sorted(self._zip_pairs),
                "level_rebuilt": self._level_rebuilt,
                "lambda_mult": self._lambda_mult,
                "tension_scale": self._tension_scale,
                "custom_weights": None if self._custom_weights is None else self._custom_weights.copy(),
                "psf": _numpy(self.psf.state_dict()),
                "psf_opt": None if self._psf_opt is None else _numpy(self._psf_opt.state_dict()),
                "photo": None if self._photo is None else _numpy(self._photo),
                "photo_opt": None if self._photo_opt is None else _numpy(self._photo_opt.state_dict()),
            }

    def load_state(self, state: dict) -> None:
        """Go on from ``state`` (:meth:`export_state` of a Fitter of the same image, PSF model
        and config), before this Fitter's first step: the level's render plan is built for the
        state's mesh (no membrane rebuild or remesh), then every variable is restored."""
        with self._lock:
            if self._level is not None:
                raise ValueError("load_state needs a Fitter that has not taken a step yet")
            dev = self.device
            self.psf.load_state_dict(_tensors(state["psf"], dev))  # before the plan: its OTF
            self._loading = True  # a cancel() now is for the first step (which raises at once)
            self._custom_weights = state["custom_weights"]
            self._shared_done, self._level_rebuilt = state["shared_done"], state["level_rebuilt"]
            self._zip_pairs = {tuple(p) for p in state.get("zip_pairs", ())}
            try:
                self._level = self._build_level(int(state["level"]), mesh=state["mesh"], blur_um=state.get("blur_um"))
                self._level.base_blur_um = state.get("base_blur_um", self._level.base_blur_um)
                if state.get("lambda_mult", 1.0) != 1.0:  # a subdivided mesh's preconditioner
                    self._lambda_mult = float(state["lambda_mult"])
                    self._set_topology(state["mesh"], self._level.index)
            finally:
                self._loading = False
            self._u = torch.as_tensor(state["u"], dtype=torch.float64, device=dev)
            self._x = torch.as_tensor(state["x"], dtype=torch.float64, device=dev)
            opt = state["opt"]
            self._opt.load_state(
                {**opt, "m1": torch.as_tensor(opt["m1"], device=dev), "m2": torch.as_tensor(opt["m2"], device=dev)}
            )
            self._loss_history = list(state["loss_history"])
            self._level_history = list(state["level_history"])
            self._recent = list(state["recent"])
            self._lr_scale = state["lr_scale"]
            self._consecutive_failures = state["consecutive_failures"]
            self._n_rollbacks = state["n_rollbacks"]
            self._done, self._converged = state["done"], state["converged"]
            self._timings = dict(state["timings"])
            self._gain, self._background = state["gain"], state["background"]
            self._volume_level = state["volume_level"]
            self._tension_scale = state["tension_scale"]
            if self._psf_opt is not None and state["psf_opt"] is not None:
                self._psf_opt.load_state_dict(_tensors(state["psf_opt"], dev))
            if state["photo"] is not None:
                self._photo = torch.as_tensor(state["photo"], device=dev).clone().requires_grad_(True)
                self._photo_opt = ParamAdam([self._photo], lr=self.config.photometric_lr)
                self._photo_opt.load_state_dict(_tensors(state["photo_opt"], dev))

    # ------------------------------------------------------------------ levels and topology
    def _face_weights(self, mesh: Mesh) -> torch.Tensor:
        if self._custom_weights is not None and len(self._custom_weights) == len(mesh.faces):
            w = self._custom_weights
        else:
            w = mesh.face_intensity()
        if self.config.membrane_weight != 1.0:
            w = np.asarray(w, dtype=np.float64) * self.config.membrane_weight
        return torch.as_tensor(w, dtype=self.dtype, device=self.device)

    def _remesh(self, mesh: Mesh, edge_um: float) -> Mesh:
        from ..geometry import remesh

        t0 = time.perf_counter()
        out = remesh(mesh, edge_um)
        self._timings["remesh"] += time.perf_counter() - t0
        if not np.all(np.isfinite(out.verts)):
            raise FloatingPointError("remesh produced non-finite vertices")
        if self._custom_weights is not None and len(out.faces) != len(self._custom_weights):
            self._custom_weights = None
        return out

    def _level_edge_um(self, factor: int) -> float:
        """The remesh edge of a level of downsampling ``factor``: ``target_edge_um`` x factor,
        but not coarser than the input mesh's own edges (nor finer than the target). A coarse
        level's 4 x 1 um edges would leave a seed sphere of a few um radius with a few dozen
        faces: on the bundled embryo (74 x 226 x 119 voxels of 0.5 / 0.25 um, seeds meshed at
        1.46 um) ``--edge 1.0`` lost two of its three cells (-74% and -75% volume) that way."""
        target = float(self.config.target_edge_um)
        return min(target * factor, max(target, self._init_edge_um))

    def _share_membranes(self, mesh: Mesh, again: str = "") -> Mesh | None:
        """One multi-material mesh (shared membranes as single sheets) for separate closed
        cells that touch, or None when there is nothing to merge (see
        ``FitConfig.share_membranes``). ``again`` ("new" or "always", see
        ``FitConfig.reshare_membranes``) rebuilds a mesh that already has shared membranes."""
        from ..geometry import (
            contact_labels_by_gap,
            label_image,
            meshes_from_labels,
            snap_to_cells,
            touching_pairs,
            zip_new_contacts,
        )
        from ..geometry.ops import edge_lengths

        already = mesh.labels is not None and bool((mesh.labels > 0).all(axis=1).any())
        if mesh.labels is None or len(mesh.cell_ids) < 2 or (already and not again):
            return None
        if self._custom_weights is not None:
            return None  # custom weights cannot follow a change of topology
        t0 = time.perf_counter()
        edge = self.config.target_edge_um
        if edge is None:  # the current mesh's, but no coarser than FitConfig.fine_edge_voxels
            edge = float(np.mean(edge_lengths(mesh.verts, mesh.faces)))
            edge = min(edge, self._fine_edge_um) if self._fine_edge_um is not None else edge
        spacing, shape = rebuild_grid(self._image.shape, self.spacing_um, self.config.rebuild_voxel * edge)
        lab = label_image(mesh, shape, spacing, self.origin_um)
        ids = np.unique(lab[lab > 0])
        # after the blurred first level two touching cells often leave a thin gap between
        # their surfaces: fill it so that the contact becomes one sheet, not two
        lab = close_contact_gaps(lab, spacing, self.config.contact_gap_um)
        # contacts where the current surfaces touch, not where voxels happen to
        gapped = contact_labels_by_gap(
            lab, mesh, spacing, self.origin_um, self.config.merge_gap_um, axis_scale=self._merge_axis_scale()
        )
        # two cells that do not share a membrane yet, whose surfaces face each other closer
        # than the PSF resolves along their normal: one membrane (FitConfig.zip_gap_sigmas)
        # (not at the first rebuild: the first level's blurred surfaces are no evidence of that)
        sigma = self._psf_sigma_um() if self.config.zip_gap_sigmas > 0 and again else None
        if sigma is not None:
            wide = contact_labels_by_gap(
                lab, mesh, spacing, self.origin_um, self.config.zip_gap_sigmas * min(sigma), axis_scale=sigma
            )
            # the pairs zipped this way keep the wide rule at later rebuilds: a contact zipped
            # while its sheets were still partly apart grows to the rest of them
            zip_pairs = (touching_pairs(wide) - touching_pairs(gapped)) | (touching_pairs(wide) & self._zip_pairs)
            gapped = zip_new_contacts(gapped, wide, zip_pairs)
            self._zip_pairs |= zip_pairs
        lab = gapped
        pairs = touching_pairs(lab)  # face-adjacent voxels of two different cells
        if already and again == "new":  # a rebuild only for a contact the mesh does not have yet
            both = mesh.labels[(mesh.labels > 0).all(axis=1)]
            pairs -= set(zip(both.min(axis=1).tolist(), both.max(axis=1).tolist()))
        if len(ids) < 2 or not pairs or len(ids) != len(mesh.cell_ids):
            self._timings["remesh"] += time.perf_counter() - t0
            return None  # a cell vanished on the grid (too small): keep the separate surfaces
        out = meshes_from_labels(lab, spacing, edge, shared=True)
        # the label image is in the frame whose voxel (0, 0, 0) is at the origin
        out = out.copy(verts=out.verts + np.asarray(self.origin_um))
        if again:  # the current surfaces are sub-voxel accurate: keep them
            out = snap_to_cells(out, mesh, 2.0 * max(spacing))
        self._timings["remesh"] += time.perf_counter() - t0
        if not np.all(np.isfinite(out.verts)) or len(out.faces) == 0:
            return None
        return out

    def _psf_sigma_um(self):
        """The PSF's standard deviations (z, y, x) in um: a Gaussian's own, a measured PSF's
        FWHM / 2.355; None for other models."""
        sigma = getattr(self.psf, "sigma_um", None)
        if sigma is not None:
            s = np.asarray(torch.as_tensor(sigma).detach().cpu(), dtype=np.float64).reshape(-1)
        elif hasattr(self.psf, "fwhm_um"):
            s = np.asarray(self.psf.fwhm_um(), dtype=np.float64) / (2.0 * math.sqrt(2.0 * math.log(2.0)))
        else:
            return None
        if s.shape == (3,) and np.all(np.isfinite(s)) and np.all(s > 0):
            return tuple(float(v) for v in s)
        return None

    def _merge_axis_scale(self):
        """Per-axis scale of the contact gap (``FitConfig.merge_gap_axes``): the PSF's
        standard deviations (z, y, x) when the model has them (a Gaussian), else the voxel
        size; None for "isotropic"."""
        if self.config.merge_gap_axes == "isotropic":
            return None
        # a Gaussian's sigma (a measured PSF's FWHM does not count here)
        sigma = self._psf_sigma_um() if getattr(self.psf, "sigma_um", None) is not None else None
        return sigma if sigma is not None else tuple(float(v) for v in self.spacing_um)

    def _set_topology(self, mesh: Mesh, index: int) -> None:
        """(Re)build everything that depends on the connectivity for level ``index``: weights,
        preconditioner, optimiser state."""
        cfg = self.config
        self._mesh = mesh
        self._faces = torch.as_tensor(mesh.faces, dtype=torch.int64, device=self.device)
        # the tension prior acts on meshes with shared membranes only: before the cells touch,
        # it would hold them apart
        self._has_contacts = mesh.labels is not None and bool((mesh.labels > 0).all(axis=1).any())
        self._weights = self._face_weights(mesh)
        if cfg.volume_level == "solve":  # unit density: the level multiplies the volume image
            self._volume_weights = torch.as_tensor(volume_face_weights(mesh), dtype=self.dtype, device=self.device)
            self._no_membrane = torch.zeros(len(mesh.faces), dtype=self.dtype, device=self.device)
        else:
            self._volume_weights = (
                0.0
                if cfg.volume_weight == 0
                else torch.as_tensor(
                    cfg.volume_weight * volume_face_weights(mesh), dtype=self.dtype, device=self.device
                )
            )
        x0 = torch.as_tensor(mesh.verts, dtype=torch.float64, device=self.device)
        t0 = time.perf_counter()
        self._precond = LaplacianPreconditioner(
            mesh.verts, mesh.faces, cfg.lambda_for_level(index) * self._lambda_mult, cfg.p, cfg.laplacian
        )
        self._timings["solve"] += time.perf_counter() - t0
        self._u = self._precond.to_differential(x0)
        self._x = self._precond.solve(self._u)
        self._opt = VertexAdam(
            tuple(self._u.shape), lr=1.0, kind=cfg.optimizer, betas=cfg.betas, dtype=torch.float64, device=self.device
        )

    def _base_blur_um(self, f: int) -> float:
        """A coarse level's scale-space blur (``FitConfig.coarse_blur`` x its voxel), capped so
        that its reach (4 sigma) stays within a quarter of the image's smallest side (the image
        beyond the box is unknown, extended by its border values: that guess stays marginal)."""
        if f == 1:
            return 0.0
        blur_um = self.config.coarse_blur * f * min(self.spacing_um)
        return min(blur_um, self._smallest_side_um() / 16.0)

    def _smallest_side_um(self) -> float:
        return min(n * s for n, s in zip(self._image.shape, self.spacing_um))

    def _level_data(self, f: int, blur_um: float):
        """The observed image of a level of factor ``f`` blurred by ``blur_um`` (loss units),
        its weights, normalisation, PSF model and renderer plan."""
        cfg = self.config
        obs = block_average(self._image, f)
        spacing = tuple(s * f for s in self.spacing_um)
        obs = gaussian_blur(obs, blur_um, spacing)
        origin = tuple(o + (f - 1) / 2.0 * s for o, s in zip(self.origin_um, self.spacing_um))
        if cfg.loss == "mse":
            # normalised so that loss values and float32 arithmetic are scale-free
            lo, hi = _quantiles(obs, (cfg.percentiles[0] / 100.0, cfg.percentiles[1] / 100.0))
            scale = hi - lo if hi > lo else 1.0
            offset = lo
            obs_l = ((obs - offset) / scale).to(self.dtype)
        else:
            # block averaging turns counts into means of f^3 counts: the sum keeps Poisson statistics
            scale = 1.0 / f**3
            offset = 0.0
            obs_l = (obs * f**3).to(self.dtype)
        weight = intensity_weight(
            obs_l, cfg.alpha, floor=cfg.weight_floor, low_pct=cfg.percentiles[0], high_pct=cfg.percentiles[1]
        )
        if self._voxel_weight is not None:
            vw = block_average(self._voxel_weight, f)
            if blur_um > 0:  # the blurred data mix in the ignored voxels' light: ignore those too
                vw = vw * (gaussian_blur(vw, blur_um, spacing) >= 0.99)
            vw = vw.to(self.dtype)
            weight = vw if weight is None else weight * vw
        # Coarse levels are a cheap approximation (the block average is itself a low-pass
        # filter): they drop the PSF's frequencies beyond their Nyquist limit instead of folding
        # them, which would oversample the band and cost as much as the full resolution.
        level_psf = self.psf if f == 1 else BlockAveragedPSF(self.psf, f, self.spacing_um, blur_um)
        renderer = self._level_renderer(tuple(obs_l.shape), spacing, level_psf, origin, f)
        return obs_l, weight, scale, offset, level_psf, renderer, spacing, origin

    def _build_level(self, index: int, mesh: Mesh | None = None, blur_um: float | None = None) -> _Level:
        """Level ``index`` (its data, plan, mesh and optimiser); ``blur_um`` a stage's blur
        (from :meth:`export_state`), else the level's own or a wider one (:meth:`_reaching`)."""
        cfg = self.config
        t0 = time.perf_counter()
        f = cfg.levels[index]
        base = self._base_blur_um(f)
        given_blur = blur_um
        blur_um = base if blur_um is None else float(blur_um)
        obs_l, weight, scale, offset, level_psf, renderer, spacing, origin = self._level_data(f, blur_um)
        self._check_cancelled()  # nothing of the new level is in place yet
        self._backend = renderer.backend_name
        if mesh is None:  # (given: the level's own mesh, when a fit goes on from load_state)
            mesh = self.current_mesh() if self._level is not None else self._mesh
            rebuilt = False
            share = cfg.share_membranes and index > 0 and (cfg.reshare_membranes != "off" or not self._shared_done)
            # the membranes' rebuild and the remesh take seconds (1.7-4 s on the sample embryo):
            # they have cancellation points (deltamic_core._cancel), so a Stop during them abandons
            # them within a fraction of a second, before anything of the new level is installed (a
            # fit that goes on after FitCancelled builds the level again, membranes included)
            with cancellable(self._check_cancelled):
                if share:
                    shared = self._share_membranes(mesh, again=cfg.reshare_membranes if self._shared_done else "")
                    if shared is not None:
                        mesh, rebuilt = shared, True
                if cfg.target_edge_um is not None and not rebuilt:
                    mesh = self._remesh(mesh, self._level_edge_um(f))
                elif f == 1 and not rebuilt and self._fine_edge_um is not None:
                    # full resolution: no coarser than FitConfig.fine_edge_voxels
                    if float(np.mean(edge_lengths(mesh.verts, mesh.faces))) > 1.1 * self._fine_edge_um:
                        mesh = self._remesh(mesh, self._fine_edge_um)
            self._timings["setup"] += time.perf_counter() - t0
            self._check_cancelled()
            self._shared_done = self._shared_done or share
            # a rebuilt mesh is only voxel-accurate: it needs full-size steps, not a refinement's
            self._level_rebuilt = rebuilt
        renderer = self._holding(renderer, mesh, level_psf, obs_l.shape, spacing, origin, f)
        self._lambda_mult = 1.0
        self._set_topology(mesh, index)
        # a new level has a new step scale (its voxel size) and new photometric normalisation
        self._lr_scale = 1.0
        self._consecutive_failures = 0
        self._tension_scale = None
        self._photo = self._photo_opt = None
        level = _Level(
            index,
            f,
            tuple(obs_l.shape),
            spacing,
            origin,
            obs_l,
            weight,
            scale,
            offset,
            renderer,
            cfg.iterations_for_level(index),
            blur_um,
            base,
            level_psf,
        )
        if given_blur is None:
            level = self._reaching(level)
        return level

    # ------------------------------------------------------------------ the coarse levels' reach
    def _stage(self, level: _Level, blur_um: float) -> _Level:
        """``level`` with its data and model blurred by ``blur_um`` instead (the same mesh)."""
        obs_l, weight, scale, offset, psf, renderer, spacing, origin = self._level_data(level.factor, blur_um)
        renderer = self._holding(renderer, self.current_mesh(), psf, obs_l.shape, spacing, origin, level.factor)
        self._tension_scale = None  # the loss' scale changes with the data
        self._photo = self._photo_opt = None
        return dataclasses.replace(
            level,
            observed=obs_l,
            weight=weight,
            scale=scale,
            offset=offset,
            renderer=renderer,
            blur_um=blur_um,
            psf=psf,
            photo_stats=None,  # of the new observed image and weight
        )

    def _cell_regions(self, level: _Level):
        """(ids, region index per voxel of ``level``'s grid): every voxel belongs to the cell of
        the current mesh whose sphere (centroid, mean vertex distance) is nearest in the power
        distance |x - c|^2 - r^2, so the regions of touching cells of different sizes meet near
        their contact; a mesh without labels is one region. A cell whose vertices are all
        held (``frozen``) has the id None."""
        mesh = self._mesh
        x = self._x.detach().cpu().numpy()
        if mesh.labels is None:
            return [1], np.zeros(level.shape, dtype=np.int64)
        ids = [int(c) for c in mesh.cell_ids]
        frozen = None if self._frozen is None else self._frozen[:, 0].cpu().numpy()
        held = []  # cells whose vertices are all held (FitConfig frozen): nothing to reach
        axes = [o + np.arange(n) * sp for o, n, sp in zip(level.origin_um, level.shape, level.spacing_um)]
        best = np.full(level.shape, np.inf)
        region = np.zeros(level.shape, dtype=np.int64)
        for k, c in enumerate(ids):
            vi = np.unique(mesh.faces[(mesh.labels == c).any(axis=1)])
            if frozen is not None and frozen[vi].all():
                held.append(c)
            v = x[vi]
            centre = v.mean(axis=0)
            r2 = float(np.mean(np.sum((v - centre) ** 2, axis=1)))
            d = sum(
                ((a - ci) ** 2).reshape([-1 if i == j else 1 for j in range(3)])
                for i, (a, ci) in enumerate(zip(axes, centre))
            )
            d = d - r2
            closer = d < best
            region[closer] = k
            best = np.where(closer, d, best)
        return [c if c not in held else None for c in ids], region

    def _overlap(self, rendered: torch.Tensor, level: _Level) -> dict:
        """{cell: correlation of the (unscaled) model image with the level's data} over each
        cell's region (:meth:`_cell_regions`), weighted like the loss. Near 0 or negative: the
        model's membranes lie where the data are dark, the solved gain collapses to its floor and
        the vertex gradient vanishes (the fit cannot move towards membranes it does not see)."""
        r = rendered.detach().to(torch.float64).cpu().numpy()
        o = level.observed.detach().to(torch.float64).cpu().numpy()
        w = None if level.weight is None else level.weight.detach().to(torch.float64).cpu().numpy()
        ids, region = self._cell_regions(level)
        out = {}
        for k, c in enumerate(ids):
            if c is None:
                continue
            m = region == k
            ww = np.ones(int(m.sum())) if w is None else w[m]
            if not ww.sum() > 0:
                continue
            rr, oo = r[m], o[m]
            dr = rr - np.dot(ww, rr) / ww.sum()
            do = oo - np.dot(ww, oo) / ww.sum()
            den = math.sqrt(float(np.dot(ww * dr, dr)) * float(np.dot(ww * do, do)))
            out[c] = float(np.dot(ww * dr, do)) / den if den > 0 else 0.0
        return out

    def _level_overlap(self, level: _Level) -> dict:
        """:meth:`_overlap` of the current mesh rendered on ``level`` (one render, no gradient)."""
        prev = self._level
        self._level = level
        try:
            with torch.no_grad():
                rendered = self._render(self._x)
        finally:
            self._level = prev
        rho = self._overlap(rendered, level)
        self._overlap_log.append((level.index, level.blur_um, rho))
        return rho

    def _reach_ok(self, rho: dict) -> bool:
        return not rho or min(rho.values()) >= self.config.reach_overlap

    def _reaching(self, level: _Level) -> _Level:
        """``level``, with a wider blur where its own does not reach the membranes from the
        current surfaces (``FitConfig.reach_overlap``): the blur grows by 1.5x until every cell's
        model overlaps the data, up to an eighth of the image's smallest side."""
        cfg = self.config
        if level.factor == 1 or cfg.reach_overlap <= 0 or level.base_blur_um <= 0:
            return level
        cap = max(self._smallest_side_um() / 8.0, level.blur_um)
        rho = self._level_overlap(level)
        while not self._reach_ok(rho) and level.blur_um < cap:
            self._check_cancelled()
            level = self._stage(level, min(level.blur_um * 1.5, cap))
            rho = self._level_overlap(level)
        if not self._reach_ok(rho):
            self._warn_unreached(rho, level.blur_um)
            # no wider blur to come back from: fit at this one (the narrower ones see even less)
            level.base_blur_um = level.blur_um
        return level

    def _narrowed(self, level: _Level) -> _Level:
        """``level`` at the narrowest of its blurs (its own, x1.5, x1.5^2...) below the current
        one that still reaches the membranes from the current surfaces, for the rest of the
        level (``base_blur_um`` raised to it: one narrowing per level); the current stage when
        none does."""
        blur = level.base_blur_um
        while blur < level.blur_um / 1.01:
            self._check_cancelled()
            stage = self._stage(level, blur)
            if self._reach_ok(self._level_overlap(stage)):
                stage.base_blur_um = blur
                return stage
            blur *= 1.5
        level.base_blur_um = level.blur_um
        return level

    def _warn_unreached(self, rho: dict, blur_um: float) -> None:
        far = sorted(c for c, v in rho.items() if v < self.config.reach_overlap)
        which = f"cell{'s' if len(far) > 1 else ''} {', '.join(map(str, far))}"
        warnings.warn(
            f"{which}: the initial surface is too far from the membranes in the image for the fit to "
            f"find them (even blurred by {blur_um:.2g} um the model and the image do not overlap: "
            f"correlation {min(rho.values()):.2f}); the fit would stay near its start. Give seed radii "
            "closer to the cells' size (or leave the radius column out to have them estimated from "
            "the image), or seeds nearer the cells' centres",
            RuntimeWarning,
            stacklevel=4,
        )

    def _holding(self, renderer, mesh, psf, shape, spacing, origin, f):
        """``renderer``, or one with a larger margin when ``mesh`` (which the previous level's
        wider box held) reaches beyond its wrap-free box: a level's first render must not fail."""

        lo_ok, hi_ok = (np.asarray(b, dtype=float) for b in renderer.box.wrap_free_bounds())
        # at least one voxel of the level inside, or the first step out would fail
        room = np.asarray(spacing, dtype=float)
        excess = np.maximum(np.maximum(lo_ok - mesh.verts.min(axis=0), mesh.verts.max(axis=0) - hi_ok) + room, 0.0)
        if not np.any(excess > 0):
            return renderer
        return self._level_renderer(
            tuple(shape), spacing, psf, origin, f, margin_um=tuple(float(e) + float(s) for e, s in zip(excess, spacing))
        )

    def _level_renderer(self, shape, spacing, psf, origin, f, **extra):
        """The Renderer of a level of factor ``f`` (coarse levels fold no aliases)."""
        from ..render import Renderer

        cfg = self.config
        return Renderer(
            shape,
            spacing,
            psf,
            origin_um=origin,
            band_threshold=cfg.band_threshold,
            backend=cfg.backend,
            dtype=self.dtype,
            device=self.device,
            max_memory_bytes=cfg.max_memory_bytes,
            fold_aliases=cfg.fold_aliases and f == 1,
            alias_warning=f == 1,  # a coarse level drops its aliases by design
            **extra,
        )

    def _advance_level_if_needed(self) -> bool:
        """Enter the next level when the current one is finished; False when all are done."""
        cfg = self.config
        if self._level is None:
            self._level = self._build_level(0)
            self._recent = []
        while True:
            lvl = self._level
            if lvl.blur_um > lvl.base_blur_um and (
                self._level_converged() or self._level_iter >= lvl.n_iterations // 2
            ):
                # a wider blur reached the membranes: go on at the level's own (or the
                # narrowest that still reaches), within the level's iterations
                self._level = self._narrowed(lvl)
                self._recent = []
                continue
            if not (self._level_iter >= lvl.n_iterations or self._level_converged()):
                break
            index = self._level.index + 1
            if index >= len(cfg.levels):
                self._done = True
                return False
            self._level = self._build_level(index)
            self._recent = []
        return True

    def _level_converged(self) -> bool:
        cfg = self.config
        if cfg.rel_tol <= 0 or len(self._recent) <= cfg.patience:
            return False
        old, new = self._recent[-cfg.patience - 1], self._recent[-1]
        conv = (old - new) <= cfg.rel_tol * abs(old)
        if conv and self._level_index == len(cfg.levels) - 1:
            self._converged = True
        return conv

    def _reshare_now(self) -> bool:
        """True after the step that ends the first ``reshare_final_at`` of the full-resolution
        level's iterations (see ``FitConfig.reshare_final_at``)."""
        cfg = self.config
        if not cfg.share_membranes or cfg.reshare_final_at <= 0 or self._frozen is not None:
            return False
        if self._level_index != len(cfg.levels) - 1 or cfg.levels[-1] != 1:
            return False
        n = self._level.n_iterations
        return self._level_iter == max(1, round(cfg.reshare_final_at * n)) and self._level_iter < n

    def _subdivide_now(self) -> bool:
        """True after the step that ends the first ``subdivide_final_at`` of the
        full-resolution level's iterations (see ``FitConfig.subdivide_final_at``)."""
        cfg = self.config
        at = cfg.subdivide_final_at
        if at is None or self._frozen is not None or self._custom_weights is not None:
            return False
        if self._level_index != len(cfg.levels) - 1 or cfg.levels[-1] != 1:
            return False
        n = self._level.n_iterations
        return self._level_iter == max(1, round(at * n)) and self._level_iter < n

    # ------------------------------------------------------------------ one step
    def _lr_now(self) -> float:
        cfg = self.config
        n = max(self._level.n_iterations, 1)
        t = min(self._level_iter / n, 1.0)
        decay = cfg.lr_final_factor + (1 - cfg.lr_final_factor) * 0.5 * (1 + math.cos(math.pi * t))
        start = 1.0 if self._level.index == 0 or self._level_rebuilt else cfg.refine_lr_factor
        return cfg.lr * start * self._lr_scale * min(self._level.spacing_um) * decay

    def _snapshot(self) -> dict:
        snap = {
            "u": self._u.clone(),
            "x": self._x.clone(),
            "opt": self._opt.state(),
            "gain": self._gain,
            "background": self._background,
        }
        if self._psf_opt is not None:
            snap["psf"] = copy.deepcopy(self.psf.state_dict())
            snap["psf_opt"] = copy.deepcopy(self._psf_opt.state_dict())
        if self._photo is not None:
            snap["photo"] = self._photo.detach().clone()
            snap["photo_opt"] = copy.deepcopy(self._photo_opt.state_dict())
        return snap

    def _restore(self, snap: dict) -> None:
        self._u = snap["u"]
        self._x = snap["x"]
        self._opt.load_state(snap["opt"])
        self._gain = snap["gain"]
        self._background = snap["background"]
        if "psf" in snap:
            self.psf.load_state_dict(snap["psf"])
            self._psf_opt.load_state_dict(snap["psf_opt"])
        if "photo" in snap:
            with torch.no_grad():
                self._photo.copy_(snap["photo"])
            self._photo_opt.load_state_dict(snap["photo_opt"])
        else:
            # created by the failed step itself (or never): start again from the closed-form values
            self._photo = self._photo_opt = None

    def _loss(self, rendered: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        lvl = self._level
        if cfg.photometric == "solve" and cfg.photometric_field == "linear":
            if lvl.photo_stats is None:
                lvl.photo_stats = FieldStats(lvl.observed, lvl.weight)
            g_f, (b_z, b_yx), (g, b) = solve_photometric_field(rendered, lvl.photo_stats)
            dt = rendered.dtype
            model = torch.addcmul(b_z.to(dt), g_f.to(dt), rendered) + b_yx.to(dt)
        else:
            if cfg.photometric == "solve" or self._photo is None:
                if lvl.photo_stats is None:
                    lvl.photo_stats = ObservedStats(lvl.observed, lvl.weight)
                g, b = solve_photometric(rendered, lvl.observed, lvl.weight, stats=lvl.photo_stats)
                if cfg.photometric == "learn":
                    # initialise the learnt gain/background at their least-squares optimum
                    self._photo = torch.tensor(
                        [math.log(g), b], dtype=torch.float64, device=self.device, requires_grad=True
                    )
                    self._photo_opt = ParamAdam([self._photo], lr=cfg.photometric_lr)
            if cfg.photometric == "learn":
                g_t = torch.exp(self._photo[0]).to(self.dtype)
                b_t = self._photo[1].to(self.dtype)
                g, b = float(g_t), float(b_t)
            else:
                g_t, b_t = g, b
            model = g_t * rendered + b_t
        self._gain = g * lvl.scale
        self._background = b * lvl.scale + lvl.offset
        if cfg.loss == "mse":
            return weighted_mse(model, lvl.observed, lvl.weight)
        return poisson_nll(model, lvl.observed, lvl.weight, floor=cfg.poisson_floor)

    def _render(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.volume_level == "solve":
            return self._render_two_levels(x)
        out = self._level.renderer.render(
            x.to(self.dtype), self._faces, self._weights, volume_weight=self._volume_weights
        )
        # with backend "auto" the renderer picks per call (it depends on the face count)
        self._backend = self._level.renderer.backend_name
        return out

    def _render_two_levels(self, x: torch.Tensor) -> torch.Tensor:
        """Membrane image + level x cytoplasm image, the level solved with gain and background
        (at the optimum the loss is stationary in the levels: no gradient through them)."""
        r, xm = self._level.renderer, x.to(self.dtype)
        membrane = r.render(xm, self._faces, self._weights)
        volume = r.render(xm, self._faces, self._no_membrane, volume_weight=self._volume_weights)
        a, c, _ = solve_two_levels(membrane, volume, self._level.observed, self._level.weight)
        if a > 0:
            self._volume_level = c / a
        self._backend = r.backend_name
        return membrane + self._volume_level * volume

    def _tension_term(self, x: torch.Tensor, data_loss: torch.Tensor) -> torch.Tensor:
        """FitConfig.tension x L0 x A / A0: the membrane area A (a shared membrane counted
        once) in units of its value A0 and of the data loss L0 at the level's first step (on
        meshes with shared membranes only)."""
        a = x[self._faces]
        area = 0.5 * torch.linalg.vector_norm(torch.cross(a[:, 1] - a[:, 0], a[:, 2] - a[:, 0], dim=1), dim=1).sum()
        if self._tension_scale is None:
            ref = abs(float(data_loss.detach()))
            self._tension_scale = self.config.tension * ref / max(float(area.detach()), 1e-30)
        return (self._tension_scale * area).to(data_loss.dtype)

    def _try_step(self, lr: float) -> float:
        u = self._u.clone().requires_grad_(True)
        if self._psf_opt is not None:
            self._psf_opt.zero_grad(set_to_none=True)
        if self.config.photometric == "learn" and self._photo is not None:
            self._photo_opt.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        x = self._precond.to_vertices(u)
        rendered = self._render(x)
        loss = self._loss(rendered)
        if self.config.tension > 0 and self._has_contacts:
            loss = loss + self._tension_term(x, loss)
        t1 = time.perf_counter()
        self._timings["render"] += t1 - t0
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise _BadStep("non-finite loss")
        self._check_cancelled()
        loss.backward()
        self._timings["backward"] += time.perf_counter() - t1
        self._check_cancelled()
        grad = u.grad
        if grad is None or not bool(torch.isfinite(grad).all()):
            raise _BadStep("non-finite vertex gradient")
        t2 = time.perf_counter()
        self._opt.lr = lr
        u_new = self._u + self._opt.direction(grad)
        x_new = self._precond.solve(u_new)
        if self._frozen is not None:  # held vertices stay where they started
            x_new = torch.where(self._frozen, self._frozen_at, x_new)
            u_new = self._precond.to_differential(x_new)
        self._timings["solve"] += time.perf_counter() - t2
        if not bool(torch.isfinite(x_new).all()):
            raise _BadStep("non-finite vertices")
        # a vertex pushed out of the renderer's wrap-free box would make the next render
        # fail: treat it like a divergent step (roll back, smaller steps)
        try:
            self._level.renderer.check_inside(x_new.to(self.dtype))
        except ValueError as exc:
            raise _BadStep(str(exc)) from None
        if self._psf_opt is not None:
            grads = [p.grad for p in self.psf.parameters() if p.requires_grad]
            if any(g is not None and not bool(torch.isfinite(g).all()) for g in grads):
                raise _BadStep("non-finite PSF gradient")
            self._psf_opt.step()
            if not all(bool(torch.isfinite(p).all()) for p in self.psf.parameters()):
                raise _BadStep("non-finite PSF parameters")
        if self.config.photometric == "learn":
            if self._photo.grad is not None:
                self._photo_opt.step()
            if not bool(torch.isfinite(self._photo).all()):
                raise _BadStep("non-finite gain/background")
        self._u = u_new
        self._x = x_new
        return loss_value

    def step(self) -> StepResult:
        """Take one optimisation step (entering the next level first when the current one is
        finished).

        Returns
        -------
        StepResult. When the step had to be rolled back, ``rolled_back`` is True, the
        vertices are those before the step and the step size has been halved.

        Raises
        ------
        FitDivergedError
            after ``config.max_failures`` consecutive rolled-back steps or when the step size
            would fall below ``lr * min_lr_factor``.
        RuntimeError
            when the fit is already complete (check :attr:`done`).
        FitCancelled
            when :meth:`cancel` was called before or during the step (the state is unchanged).
        """
        with self._lock:
            t_start = time.perf_counter()
            self._check_cancelled()
            if not self._advance_level_if_needed():
                raise RuntimeError("the fit is complete: every level has run its iterations")
            cfg = self.config
            lr = self._lr_now()
            snap = self._snapshot()
            try:
                loss_value = self._try_step(lr)
            except FitCancelled:
                self._restore(snap)
                self._timings["total"] += time.perf_counter() - t_start
                raise
            except (_BadStep, FloatingPointError) as exc:
                self._restore(snap)
                self._n_rollbacks += 1
                self._consecutive_failures += 1
                self._lr_scale *= 0.5
                self._timings["total"] += time.perf_counter() - t_start
                if self._consecutive_failures >= cfg.max_failures or self._lr_scale < cfg.min_lr_factor:
                    raise FitDivergedError(
                        f"fit diverged: {self._consecutive_failures} consecutive steps produced non-finite values "
                        f"(last: {exc}); the step size is now {self._lr_scale:g} x lr. Lower FitConfig.lr or raise "
                        "FitConfig.lambda_smooth"
                    ) from None
                return self._result_for(float("nan"), lr, rolled_back=True)
            self._consecutive_failures = 0
            self._loss_history.append(loss_value)
            self._level_history.append(self._level.index)
            self._recent.append(loss_value)
            if self._psf_opt is not None and self._level_iter % cfg.band_update_every == 0:
                self._level.renderer.update_band()
            remeshed = False
            if (
                cfg.remesh_every
                and self._level_iter % cfg.remesh_every == 0
                and self._level_iter < self._level.n_iterations
            ):
                mesh = self._remesh(self.current_mesh(), self._level_edge_um(self._level.factor))
                self._set_topology(mesh, self._level.index)
                remeshed = True
            subdivide_now = self._subdivide_now()  # before the rebuild resets nothing it reads
            if self._reshare_now():
                # the full-resolution surfaces are now as close as the data make them: zip the
                # near-touching sheets that were still apart at the level change
                mesh = self._share_membranes(self.current_mesh(), again="always")  # timed as "remesh"
                if mesh is not None:
                    self._set_topology(mesh, self._level.index)
                    self._recent = []  # the losses before and after are not comparable
                    remeshed = True
            if subdivide_now:
                from ..geometry import subdivide

                t_sub = time.perf_counter()
                self._lambda_mult = cfg.subdivide_lambda_factor
                self._set_topology(subdivide(self.current_mesh()), self._level.index)
                self._timings["remesh"] += time.perf_counter() - t_sub
                self._recent = []  # the losses before and after are not comparable
                remeshed = True
            self._timings["total"] += time.perf_counter() - t_start
            # look ahead so that `done` is accurate right after the last step
            if self._level_iter >= self._level.n_iterations or self._level_converged():
                later = range(self._level_index + 1, len(cfg.levels))
                if all(cfg.iterations_for_level(i) == 0 for i in later):
                    self._done = True
            return self._result_for(loss_value, lr, remeshed=remeshed)

    def _result_for(self, loss_value, lr, *, rolled_back=False, remeshed=False) -> StepResult:
        return StepResult(
            iteration=self.iteration,
            loss=loss_value,
            verts=self._x.detach().cpu().numpy().astype(np.float64),
            faces=self._mesh.faces.copy(),
            labels=None if self._mesh.labels is None else self._mesh.labels.copy(),
            psf_params=self._psf_params(),
            gain=float(self._gain),
            background=float(self._background),
            level=self._level.index,
            factor=self._level.factor,
            lr=float(lr),
            rolled_back=rolled_back,
            remeshed=remeshed,
        )

    def _psf_params(self) -> dict:
        return self.psf.as_dict()

    # ------------------------------------------------------------------ driving
    def run(self, n: int | None = None, callback: Callable[[StepResult], bool | None] | None = None) -> FitResult:
        """Run up to ``n`` steps (default: until every level is done), or until :meth:`stop`
        is called or ``callback(step_result)`` returns False. Calling ``run`` again resumes.

        Returns
        -------
        FitResult of the current state.
        """
        if n is not None and (isinstance(n, bool) or int(n) != n or n < 0):
            raise ValueError(f"n must be a non-negative integer or None, got {n!r}")
        self._stop.clear()
        taken = 0
        while not self._done and (n is None or taken < n) and not self._stop.is_set():
            res = self.step()
            taken += 1
            if callback is not None and callback(res) is False:
                break
        return self.result()

    def stop(self) -> None:
        """Ask a running :meth:`run` to return after the current step (thread-safe)."""
        self._stop.set()

    def cancel(self) -> None:
        """Abandon the step in progress as soon as possible (thread-safe): it raises
        :class:`FitCancelled` at its next stage boundary (after the level's render plan, at
        the cancellation points of a level change's membrane rebuild and remesh, before and
        after the backward pass), leaving the state of the last completed step; with no step
        running, the next :meth:`step` raises it. Once raised, the fit can go on."""
        self._cancel.set()

    def _check_cancelled(self) -> None:
        if self._cancel.is_set() and not self._loading:
            self._cancel.clear()
            raise FitCancelled("the fit was cancelled")

    def result(self) -> FitResult:
        """The current state as a :class:`FitResult` (final after the last step)."""
        with self._lock:
            mesh = self.current_mesh()
            mesh.metadata = dict(mesh.metadata)
            mesh.metadata.update({"fit_iterations": self.iteration, "fit_loss": self._loss_history[-1:] or None})
            return FitResult(
                mesh=mesh,
                loss_history=list(self._loss_history),
                level_history=list(self._level_history),
                timings=dict(self._timings),
                psf_params=self._psf_params(),
                gain=float(self._gain),
                background=float(self._background),
                backend=self._backend,
                iterations=self.iteration,
                n_rollbacks=self._n_rollbacks,
                converged=self._converged or self._done,
                config=self.config.as_dict(),
                volume_level=self._volume_level if self.config.volume_level == "solve" else None,
            )
