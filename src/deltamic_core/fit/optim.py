"""Adam-style updates for a (V, 3) block of vertex coordinates, with snapshot/restore.

Two variants of the second moment:

- ``"uniform"``: one scalar for the whole block, the largest per-entry second moment, as in
  the large-steps paper. Each step is then the first moment divided by one number, so the
  smooth deformation produced by the preconditioner is not distorted by per-coordinate scaling
  (per-entry Adam would re-introduce high frequencies).
- ``"vector"``: one second moment per vertex (the squared norm of its 3D gradient), which is
  invariant to rotations of the coordinate frame.

The optimiser is deliberately tiny and explicit (not a ``torch.optim.Optimizer``): the fitter
needs to snapshot and restore its full state when a step is rolled back, and to rebuild it
when the topology changes.

:class:`ParamAdam` is plain per-entry Adam for the few other learnt tensors (PSF parameters, the
learnt gain and background). It replaces ``torch.optim.Adam`` there because constructing any
``torch.optim`` optimiser imports ``torch._dynamo`` (its ``add_param_group`` is wrapped by
``torch._disable_dynamo``): ~3 s of start-up per process (measured with torch 2.13 on the 2-core
reference machine), paid by every CLI fit, tracking job and napari fit thread before its first
step.
"""

from __future__ import annotations

import math

import torch

__all__ = ["VertexAdam", "ParamAdam"]

ADAM_KINDS = ("uniform", "vector")


class VertexAdam:
    """Adam on one (V, 3) tensor of differential coordinates.

    Parameters
    ----------
    shape : (V, 3)
    lr : float > 0
        Step size (same units as the coordinates).
    kind : {"uniform", "vector"}
    betas : (beta1, beta2)
    eps : float
    dtype, device : of the state tensors
    """

    def __init__(
        self,
        shape,
        lr: float,
        kind: str = "uniform",
        betas=(0.9, 0.999),
        eps: float = 1e-8,
        dtype=torch.float64,
        device="cpu",
    ):
        if kind not in ADAM_KINDS:
            raise ValueError(f"kind must be one of {ADAM_KINDS}, got {kind!r}")
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be positive and finite, got {lr}")
        b1, b2 = betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        self.lr = float(lr)
        self.kind = kind
        self.betas = (float(b1), float(b2))
        self.eps = float(eps)
        self.t = 0
        self.m1 = torch.zeros(shape, dtype=dtype, device=device)
        if kind == "uniform":
            self.m2 = torch.zeros(shape, dtype=dtype, device=device)
        else:
            self.m2 = torch.zeros(shape[:-1] + (1,), dtype=dtype, device=device)

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        """Update the moments with ``grad`` and return the step ``-lr * m1_hat / (sqrt(m2_hat) + eps)``."""
        b1, b2 = self.betas
        g = grad.to(self.m1.dtype)
        self.t += 1
        self.m1.mul_(b1).add_(g, alpha=1 - b1)
        if self.kind == "uniform":
            self.m2.mul_(b2).add_(g.square(), alpha=1 - b2)
        else:
            self.m2.mul_(b2).add_(g.square().sum(dim=-1, keepdim=True), alpha=1 - b2)
        m1_hat = self.m1 / (1 - b1**self.t)
        m2_hat = self.m2 / (1 - b2**self.t)
        if self.kind == "uniform":
            denom = m2_hat.max().sqrt() + self.eps
        else:
            denom = m2_hat.sqrt() + self.eps
        return -self.lr * m1_hat / denom

    def state(self) -> dict:
        """A deep copy of the state (for rollback)."""
        return {"t": self.t, "m1": self.m1.clone(), "m2": self.m2.clone(), "lr": self.lr}

    def load_state(self, state: dict, *, keep_lr: bool = True) -> None:
        self.t = state["t"]
        self.m1 = state["m1"].clone()
        self.m2 = state["m2"].clone()
        if not keep_lr:
            self.lr = state["lr"]


class ParamAdam:
    """Adam (Kingma & Ba; no weight decay, no amsgrad) on a list of leaf tensors, in place.

    The update of ``torch.optim.Adam`` with its defaults: per entry,
    ``p -= lr * m_hat / (sqrt(v_hat) + eps)`` with bias-corrected moments ``m_hat``, ``v_hat``.
    Entries whose ``grad`` is None are left as they are and their moments are not advanced.
    """

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params = list(params)
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be positive and finite, got {lr}")
        self.lr = float(lr)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self._state = [None] * len(self.params)  # (t, m1, m2) per parameter, created on its first step

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if p.grad is not None:
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        b1, b2 = self.betas
        for i, p in enumerate(self.params):
            g = p.grad
            if g is None:
                continue
            if self._state[i] is None:
                self._state[i] = (0, torch.zeros_like(p), torch.zeros_like(p))
            t, m1, m2 = self._state[i]
            t += 1
            m1.mul_(b1).add_(g, alpha=1 - b1)
            m2.mul_(b2).addcmul_(g, g, value=1 - b2)
            self._state[i] = (t, m1, m2)
            denom = (m2 / (1 - b2**t)).sqrt_().add_(self.eps)
            p.addcdiv_(m1, denom, value=-self.lr / (1 - b1**t))

    def state_dict(self) -> dict:
        """A deep copy of the moments and step counts (for rollback)."""
        return {
            "lr": self.lr,
            "state": [None if s is None else (s[0], s[1].clone(), s[2].clone()) for s in self._state],
        }

    def load_state_dict(self, state: dict) -> None:
        self.lr = float(state["lr"])
        self._state = [None if s is None else (s[0], s[1].clone(), s[2].clone()) for s in state["state"]]
