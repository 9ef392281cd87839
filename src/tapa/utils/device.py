"""The torch device a command runs on."""

from __future__ import annotations

import torch


def pick_device(preference: str) -> torch.device:
    """``auto``: CUDA when there is a GPU, else the CPU; anything else as torch names it."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)
