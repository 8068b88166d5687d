"""``--device auto|cpu|cuda|cuda:N`` -> a torch.device, or one line saying why not."""
from __future__ import annotations

import os

import torch

from capsgen.errors import ConfigError

DEVICE_HELP = "auto (CUDA when available, else CPU) | cpu | cuda | cuda:N"


def resolve_device(spec: str | None = "auto") -> torch.device:
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            # under torchrun each process takes the GPU of its local rank
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {spec}: no CUDA device is available here; use --device cpu or auto")
        index = int(os.environ.get("LOCAL_RANK", 0)) if spec == "cuda" else None
        if index is None:
            try:
                index = int(spec.split(":", 1)[1])
            except ValueError:
                raise ConfigError(f"--device {spec}: expected cuda:N with a number N") from None
        if not 0 <= index < torch.cuda.device_count():
            raise ConfigError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return torch.device("cuda", index)
    raise ConfigError(f"--device {spec!r}: choose {DEVICE_HELP}")
