"""Memory of one training step, estimated before it runs, and the free memory of a device.

Users of public CapsNet ports meet out-of-memory at 25 GB without warning: the votes of a
capsule layer are [B, I, J, D] — batch x children x parents x pose — and grow with all four.
capsgen estimates a step's peak from the configuration and the batch, on a task built on the
``meta`` device (shapes only, no storage), and refuses a run whose estimate exceeds the device's
free memory before anything is allocated or written (:func:`check_step_memory`).

The estimate (:func:`forward_activation_bytes`, one rule per kind of layer, stated here once):

- every leaf layer outside a capsule layer keeps its output for the backward pass: its bytes;
- a capsule layer that materialises votes (dynamic or self-attention routing) keeps
  ``KEPT_VOTES`` copies of its votes V = [B, I, J, D] x 4 bytes (the contiguous [B, J, I, D] copy
  the routing reads, plus the per-iteration couplings [B, J, I] x R and the parents), and needs
  ``TRANSIENT_VOTES`` more while it runs (the votes as computed before that copy in the forward;
  the votes' gradient and its transposed copy for the transforms' matmul in the backward);
- the peak of the step is what all layers keep, plus the largest transient of one layer.

Trainable routing (G-CapsNets) folds its couplings into the transforms and never makes votes
(capsgen.nn.trainable_routing), so it falls under the first rule. Weights, gradients and
optimizer moments are counted exactly from the built task (:func:`state_bytes`).
"""
from __future__ import annotations

import math
import os
from contextlib import ExitStack
import torch
import torch.nn as nn

from capsgen.errors import CapsgenError
from capsgen.nn.attention_routing import AttentionDenseCapsules
from capsgen.nn.layers import ConvCapsules, DenseCapsules

FLOAT = 4   # bytes per element: estimates are for fp32 (bf16 autocast keeps fp32 weights and
            # some fp32 activations, so the fp32 figure is the safe one)
KEPT_VOTES = 1
TRANSIENT_VOTES = 2
GIB = 1024 ** 3


def _votes_elements(layer: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """(elements of the votes, routing iterations) of one forward of a vote-making capsule layer."""
    if isinstance(layer, ConvCapsules):
        B, C, H, W, _ = x.shape
        k, s, p = layer.kernel_size, layer.stride, layer.padding
        positions = ((H + 2 * p - k) // s + 1) * ((W + 2 * p - k) // s + 1)
        I, J, D, _ = layer.weight.shape
        return B * positions * I * J * D, layer.routing_iterations
    I, J, D, _ = layer.weight.shape
    iterations = getattr(layer, "routing_iterations", 1)
    return x.shape[0] * I * J * D, iterations


VOTE_LAYERS = (DenseCapsules, ConvCapsules, AttentionDenseCapsules)


class _Tally:
    """What one meta forward keeps (bytes) and the largest transient of one layer."""

    def __init__(self) -> None:
        self.kept = 0
        self.transient = 0
        self._inside = 0   # >0 while inside a vote-making capsule layer

    def pre(self, layer, args):
        if isinstance(layer, VOTE_LAYERS):
            if self._inside == 0:
                votes, iterations = _votes_elements(layer, args[0])
                d = layer.weight.shape[2]
                # couplings [B, J, I] per iteration are 1/D of the votes each
                self.kept += int(votes * (KEPT_VOTES + iterations / d)) * FLOAT
                self.transient = max(self.transient, TRANSIENT_VOTES * votes * FLOAT)
            self._inside += 1

    def post(self, layer, args, out):
        if isinstance(layer, VOTE_LAYERS):
            self._inside -= 1
            return
        if self._inside or any(True for _ in layer.children()):
            return
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                n = t.numel() * FLOAT
                self.kept += n
                self.transient = max(self.transient, n)


def forward_activation_bytes(module: nn.Module, *inputs: torch.Tensor) -> tuple[int, int]:
    """(kept, largest transient) bytes of ``module(*inputs)`` by the rules of the module docstring;
    ``module`` built on the meta device, ``inputs`` meta tensors (:func:`meta`)."""
    tally = _Tally()
    with ExitStack() as stack:
        for layer in module.modules():
            stack.callback(layer.register_forward_pre_hook(tally.pre).remove)
            stack.callback(layer.register_forward_hook(tally.post).remove)
        with torch.no_grad():   # meta tensors: shapes flow, nothing is computed or kept
            module(*inputs)
    return tally.kept, tally.transient


def meta(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An input of ``shape`` on the meta device (no storage)."""
    return torch.empty(*shape, device="meta", dtype=dtype)


def passes_bytes(*passes: tuple) -> int:
    """Peak bytes of forward passes ``(module, *inputs)`` whose activations are alive at once
    (one backward follows them all): what each keeps, plus the largest transient of any one."""
    kept = transient = 0
    for module, *inputs in passes:
        k, t = forward_activation_bytes(module, *inputs)
        kept, transient = kept + k, max(transient, t)
    return kept + transient


def _optimizer_slots(opt: torch.optim.Optimizer) -> int:
    """Tensors of optimizer state per parameter (Adam's two moments, SGD's momentum)."""
    name = type(opt).__name__
    if name in ("Adam", "AdamW", "NAdam", "RAdam", "Adamax"):
        return 2
    if name in ("SGD", "RMSprop", "Adagrad"):
        return 1 if name != "SGD" or any(g.get("momentum", 0) for g in opt.param_groups) else 0
    return 2   # unknown: assume Adam-like rather than undercount


def state_bytes(modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer]) -> int:
    """Weights and buffers, plus a gradient and the optimizer's slots for every optimised weight."""
    total = sum(t.numel() * t.element_size() for m in modules.values()
                for t in [*m.parameters(), *m.buffers()])
    for opt in optimizers.values():
        params = [p for g in opt.param_groups for p in g["params"]]
        total += sum(p.numel() * p.element_size() for p in params) * (1 + _optimizer_slots(opt))
    return total


def free_memory(device: torch.device) -> tuple[int, str]:
    """(free bytes, where the figure comes from) of ``device``."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free, f"free memory of {device}"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"
    except OSError:
        pass
    pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return pages, "free physical pages (sysconf)"


class PeakMemory:
    """Peak bytes allocated inside a ``with`` block, above what was in use when it began.

    CUDA: ``torch.cuda.max_memory_allocated`` (reset on entry). CPU: the process's peak resident
    set size. torch's CPU allocator is plain malloc, invisible to tracemalloc, so RSS is what
    sees it; on Linux the high-water mark is reset on entry (``5`` into /proc/self/clear_refs,
    then VmHWM), so earlier peaks — imports, reading data — do not hide this one; elsewhere the
    ``resource.getrusage`` maximum is used, which is only right if the block sets a new peak.
    ``how`` says which. Freed heap memory that malloc keeps can be reused without raising RSS,
    so measure in a fresh process for a figure that is not an underestimate.
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.peak = 0
        self.how = ""

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            self.how = "torch.cuda.max_memory_allocated"
            return self
        self._start = _rss()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.how = "peak RSS (VmHWM, reset)"
        except OSError:
            self.how = "peak RSS (getrusage)"
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._start
        else:
            self.peak = max(0, _peak_rss() - self._start)


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _rss() -> int:
    kib = _status_kib("VmRSS")
    return kib * 1024 if kib is not None else _peak_rss()


def _peak_rss() -> int:
    kib = _status_kib("VmHWM")
    if kib is None:
        import resource

        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss   # KiB on Linux
    return kib * 1024


def gb(n: float) -> str:
    return f"{n / GIB:.3g} GB"


def check_step_memory(estimate: int, device: torch.device, max_memory_gb: float | None,
                      shrink: str) -> None:
    """Refuse (one line) a step whose ``estimate`` (bytes) exceeds the limit: ``max_memory_gb``
    when given, else the device's free memory. ``shrink`` names the options that lower it."""
    if max_memory_gb is not None:
        limit, source = int(max_memory_gb * GIB), "train.max_memory_gb"
    else:
        limit, source = free_memory(device)
    if estimate > limit:
        raise CapsgenError(f"one training step needs about {gb(estimate)} (estimated from the config and batch) "
                           f"but the limit is {gb(limit)} ({source}); shrink it with {shrink}, or raise the "
                           "limit with --set train.max_memory_gb=N if you know better")


def per_process_batch(batch_size: int, world_size: int) -> int:
    return math.ceil(batch_size / max(world_size, 1))
