"""Device selection from config: 'auto' picks CUDA when present, else CPU. No hard-coded .cuda()."""

from __future__ import annotations


def resolve_device(name: str = "auto") -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested in the dataset YAML but CUDA is not available")
    return name
