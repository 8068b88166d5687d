"""``capsgen export RUN --out model.safetensors``: a run's weights alone, for use elsewhere.

A run's checkpoints also hold optimiser state, RNG states and task extras (a 2-step CapsNet run
keeps 189 MB in last + best). The export holds only the networks' ``state_dict`` tensors, named
``<module>.<parameter>`` as ``Task.modules`` calls them, with the run's config as JSON metadata
so the file says what it is. It is written atomically and refuses an existing file unless forced.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from capsgen import __version__
from capsgen.runs import open_run
from capsgen.sampling import writable, write_file


def export_weights(run_dir: str | Path, out: str | Path, which: str = "last", force: bool = False) -> dict[str, Any]:
    """Write the ``which`` checkpoint's network weights of ``run_dir`` to ``out`` (.safetensors)."""
    from safetensors.torch import save

    from capsgen.config import to_dict

    out = writable(out, ".safetensors", force)
    opened = open_run(run_dir, which, device="cpu")
    tensors = {f"{name}.{key}": value.detach().cpu().contiguous().clone()
               for name, module in opened.task.modules.items() for key, value in module.state_dict().items()}
    meta = {"capsgen": __version__, "family": opened.train_config.family, "checkpoint": opened.checkpoint.stem,
            "train": json.dumps(to_dict(opened.train_config)), "model": json.dumps(to_dict(opened.model_config)),
            "data": json.dumps({"name": opened.info.name, "shape": list(opened.info.shape),
                                "class_names": opened.info.class_names,
                                "attribute_names": opened.info.attribute_names})}
    write_file(out, save(tensors, metadata=meta))
    return {"run": str(opened.run.path), "out": str(out), "checkpoint": opened.checkpoint.stem,
            "tensors": len(tensors), "parameters": sum(t.numel() for t in tensors.values()),
            "bytes": out.stat().st_size}
