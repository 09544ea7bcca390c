"""Several processes, one run: what co-teaching needs from ``torch.distributed`` (torchrun, gloo or NCCL).

Co-teaching selects each batch's small-loss samples, and VoG, the per-class forget rates and the selection
metrics are per-sample statistics over the whole training set. With data split over processes, each rank
therefore gathers its batch's per-sample outputs (indices, labels, losses, logits, features) into the
global batch, every rank computes the same selection and per-sample state from it, and each rank trains on
its own part of the selection. Gradients are summed over ranks by each peer's own
``DistributedDataParallel``, and batch-norm statistics come from the global batch
(:class:`GlobalBatchNorm`), so two processes compute what one process computes on the same global batch.
Rank 0 alone writes files and TensorBoard events and talks to the expert; the other ranks wait on a barrier
and read what it wrote.

Outside ``torchrun`` every function here is the one-process identity: rank 0 of a world of 1.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    "GlobalBatchNorm",
    "NullSummaryWriter",
    "barrier",
    "broadcast_object",
    "convert_to_global_batchnorm",
    "backend_for",
    "device_for_rank",
    "gather_objects",
    "gather_rows",
    "global_batchnorm_sync",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "main_process_summary_writer",
    "per_process_batch_size",
    "rank",
    "shutdown_distributed",
    "world_size",
]


def is_distributed() -> bool:
    """True inside a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 outside a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """How many processes train together (1 outside a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """Rank 0, the one process that writes files, logs and talks to the expert."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (nothing to wait for in one process)."""
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: Any, source: int = 0) -> Any:
    """Rank ``source``'s ``obj`` on every rank (a picklable object; the argument is ignored elsewhere)."""
    if not is_distributed():
        return obj
    holder = [obj if rank() == source else None]
    dist.broadcast_object_list(holder, src=source)
    return holder[0]


def backend_for(device: str | torch.device | None = None) -> str:
    """The process-group backend for the training device: NCCL for CUDA, gloo for the CPU.

    Args:
        device: the configured device; None means "CUDA if available", as :func:`device_for_rank` reads it. A
            CPU device gets gloo even on a machine with GPUs (NCCL cannot reduce CPU tensors).
    """
    if device is None:
        return "nccl" if torch.cuda.is_available() else "gloo"
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init_distributed(backend: str | None = None, device: str | torch.device | None = None) -> bool:
    """Join the process group torchrun describes in the environment; nothing when not under torchrun.

    Args:
        backend: "gloo" or "nccl"; default :func:`backend_for` ``device``.
        device: the device training will use (e.g. the ``--device`` a user gave).

    Returns:
        True when this process is part of a process group afterwards.
    """
    if not dist.is_available():
        return False
    if dist.is_initialized():
        return True
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return False
    dist.init_process_group(backend=backend or backend_for(device))
    return True


def shutdown_distributed() -> None:
    """Free what held the process group, then leave the group on every rank together (if one is joined).

    The engines and their ``DistributedDataParallel`` peers sit in reference cycles that only the garbage
    collector frees. Collected here, they let go of the group while the interpreter is whole; left to
    interpreter shutdown, objects that gloo's threads still reference die with it and can abort the process.
    """
    gc.collect()
    if not (dist.is_available() and dist.is_initialized()):
        return
    dist.barrier()  # no rank tears down its end of a connection another rank still waits on
    dist.destroy_process_group()


def device_for_rank(device: str | torch.device | None = None) -> torch.device:
    """The device this rank trains on: ``cuda:<LOCAL_RANK>`` when CUDA is available, else the CPU.

    Args:
        device: an explicit choice; "cuda" (no index) means this rank's GPU, "cpu" the CPU.
    """
    if device is not None and torch.device(device).type == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if device is not None and torch.device(device).type == "cuda":
            raise RuntimeError(f"device {device} was asked for, but CUDA is not available on this machine")
        return torch.device("cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def per_process_batch_size(batch_size: int) -> int:
    """Each rank's share of the global ``batch_size``, so selection sees the batch one process would see.

    Raises:
        ValueError: ``batch_size`` is not a multiple of the number of processes (naming the key).
    """
    processes = world_size()
    if batch_size % processes:
        raise ValueError(
            f"batch_size {batch_size} is the global batch and must be a multiple of the {processes} processes; "
            f"set batch_size to {max(processes, batch_size // processes * processes)}"
        )
    return batch_size // processes


def gather_rows(tensors: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], slice]:
    """Concatenate each tensor's rows over all ranks, in rank order (ranks may hold different row counts).

    The gathered tensors carry no gradient: they feed the selection and the per-sample statistics, while
    each rank backpropagates through its own rows.

    Args:
        tensors: tensors whose first dimension is this rank's batch (all the same length).

    Returns:
        The gathered tensors, and the slice of this rank's rows in them.
    """
    local = int(tensors[0].shape[0]) if tensors else 0
    if not is_distributed():
        return [t.detach() for t in tensors], slice(0, local)
    device = tensors[0].device
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([local], dtype=torch.long, device=device))
    counts = [int(s.item()) for s in sizes]
    largest = max(counts)
    gathered = []
    for tensor in tensors:
        tensor = tensor.detach()
        padded = tensor.new_zeros((largest, *tensor.shape[1:]))
        padded[:local] = tensor
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded.contiguous())
        gathered.append(torch.cat([part[:count] for part, count in zip(parts, counts, strict=True)]))
    start = sum(counts[: rank()])
    return gathered, slice(start, start + local)


def gather_objects(values: Sequence[Any]) -> list[Any]:
    """Concatenate a list of picklable values (a batch's sample ids, say) over all ranks, in rank order."""
    if not is_distributed():
        return list(values)
    parts: list[Any] = [None] * world_size()
    dist.all_gather_object(parts, list(values))
    return [value for part in parts for value in part]


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose gradient is the sum over ranks of the gradients (each rank's loss depends on the
    global sum, so every rank's inputs get the gradient of every rank's loss)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        summed = tensor.clone()
        dist.all_reduce(summed)
        return summed

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        summed = grad.clone()
        dist.all_reduce(summed)
        return summed


class GlobalBatchNorm(_BatchNorm):
    """Batch norm whose training statistics come from the global batch of all ranks, on any device.

    ``torch.nn.SyncBatchNorm`` runs on GPUs only; this one all-reduces the per-channel sums (differentiably,
    so the gradient is the global batch's too) and works with gloo on the CPU as well. It synchronises only
    while :func:`global_batchnorm_sync` is active (the co-teaching trainer's training step), so a forward pass
    that one rank runs alone (an acquisition's MC dropout, say) never waits for the others. Its state dict is
    a plain batch norm's, so saved models load into the undistributed network.
    """

    synchronise = False

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.synchronise and is_distributed()):
            return super().forward(input)
        dims = [0, *range(2, input.dim())]
        count = torch.tensor([input.numel() / input.shape[1]], dtype=input.dtype, device=input.device)
        stats = torch.cat([input.sum(dims), (input * input).sum(dims), count])
        stats = _AllReduceSum.apply(stats)
        channels = input.shape[1]
        total = stats[-1]
        mean = stats[:channels] / total
        variance = (stats[channels : 2 * channels] / total - mean * mean).clamp_min(0.0)
        if self.track_running_stats and self.running_mean is not None:
            momentum = 0.1 if self.momentum is None else self.momentum
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                unbiased = variance * total / (total - 1).clamp_min(1.0)
                self.running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
                self.running_var.mul_(1 - momentum).add_(momentum * unbiased.detach())
        shape = [1, channels] + [1] * (input.dim() - 2)
        normalised = (input - mean.view(shape)) * torch.rsqrt(variance.view(shape) + self.eps)
        if self.affine:
            normalised = normalised * self.weight.view(shape) + self.bias.view(shape)
        return normalised


def convert_to_global_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm{1,2,3}d`` in ``module`` by a :class:`GlobalBatchNorm` sharing its parameters
    and buffers (an optimizer built before keeps working). Returns the converted module."""
    if isinstance(module, _BatchNorm) and not isinstance(module, GlobalBatchNorm):
        converted = GlobalBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        if module.affine:
            converted.weight = module.weight
            converted.bias = module.bias
        if module.track_running_stats:
            converted.running_mean = module.running_mean
            converted.running_var = module.running_var
            converted.num_batches_tracked = module.num_batches_tracked
        converted.train(module.training)
        return converted
    for name, child in module.named_children():
        replacement = convert_to_global_batchnorm(child)
        if replacement is not child:
            setattr(module, name, replacement)
    return module


@contextmanager
def global_batchnorm_sync(module: nn.Module) -> Iterator[None]:
    """Within the block, ``module``'s :class:`GlobalBatchNorm` layers take their statistics over all ranks."""
    layers = [m for m in module.modules() if isinstance(m, GlobalBatchNorm)]
    for layer in layers:
        layer.synchronise = True
    try:
        yield
    finally:
        for layer in layers:
            layer.synchronise = False


class NullSummaryWriter:
    """A TensorBoard writer that writes nothing: the other ranks' writer, so only rank 0 logs events."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def main_process_summary_writer(log_dir: str):
    """A ``SummaryWriter`` on rank 0, a :class:`NullSummaryWriter` on the other ranks."""
    if not is_main_process():
        return NullSummaryWriter()
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=log_dir)
