"""Cross-rank gathering for losses, miners and evaluation under DDP.

Semantics of :func:`all_gather_with_grad` (the one losses and miners see):

* forward: every rank returns the same concatenation ``[x_0; x_1; ...; x_{W-1}]`` of all ranks' local
  batches (rank order), so a loss or miner on rank ``r`` sees the *global* batch;
* backward: only the local slice ``x_r`` is differentiable (remote slices are detached copies), and its
  gradient is multiplied by the world size ``W``.

Why the factor ``W``: each rank computes the same global loss ``L``. Rank ``r`` back-propagates
``W * dL/dx_r`` into its own model replica, DDP averages parameter gradients over ranks, so the model
gets ``(1/W) * sum_r W * dL/dx_r * dx_r/dtheta = dL/dtheta`` -- exactly the single-process gradient on the
global batch. Loss parameters (proxies, PDDM unit, learnable margins) see the whole global batch on every
rank, so their per-rank gradient already is ``dL/dP`` and DDP's average leaves it unchanged. The tested
invariant (``tests/engine/test_ddp.py``): gradients of 2 gloo processes equal one process on the same batch.

Requirements: the same local batch size on every rank (our batch samplers guarantee it) and the same
random choices in miners on every rank (same seed on every rank; Lightning's ``seed_everything`` does it).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_info() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def agree_nonfinite(rows: torch.Tensor, loss_bad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's view of a training step's finiteness, summed over the ranks (one all-reduce, no host read):
    ``rows`` the batch rows with a NaN/Inf in the model's output, ``loss_bad`` whether the loss is not finite. A
    rank that skipped a step on its own flags (its rows are its own) would leave the other ranks waiting in the
    step's collectives (the gradient reduction, the logged loss's sync) for ever."""
    flags = torch.stack([rows.to(torch.float32), loss_bad.to(rows.device, torch.float32)])  # exact below 2**24
    dist.all_reduce(flags)
    return flags[0].round().long(), flags[1] > 0


class _GatherWithLocalGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, grad_scale: float) -> torch.Tensor:  # type: ignore[override]
        rank, world = world_info()
        ctx.rank, ctx.size, ctx.grad_scale = rank, x.shape[0], grad_scale
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        start = ctx.rank * ctx.size
        return grad[start:start + ctx.size] * ctx.grad_scale, None


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank; the local part keeps its gradient (scaled by ``W``), remote parts
    are constants. Identity when not distributed. See the module docstring for the exact semantics."""
    _, world = world_info()
    if world == 1:
        return x
    return _GatherWithLocalGrad.apply(x, float(world))


def all_gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (no gradient) from every rank, allowing a different first dimension per rank."""
    _, world = world_info()
    if world == 1:
        return x.detach()
    x = x.detach().contiguous()
    n = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    counts = [int(s.item()) for s in sizes]
    width = max(counts)
    padded = torch.zeros((width, *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts)], dim=0)
