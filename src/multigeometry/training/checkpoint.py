"""Checkpoints: atomic writes, every rank's RNG state, and loading with `weights_only=True`."""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from multigeometry.io import atomic_path

log = logging.getLogger(__name__)

_NAME = re.compile(r"step-(\d+)\.pt")


def rng_state() -> dict[str, Any]:
    """This process's random state, in types that `torch.load(weights_only=True)` accepts."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_path(folder: Path, step: int) -> Path:
    return Path(folder) / f"step-{step:08d}.pt"


def save_checkpoint(folder: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    path = checkpoint_path(folder, step)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    for old in list_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(folder: Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def clear_checkpoints(folder: Path) -> int:
    """Remove the checkpoints of an earlier run (a fresh run starts here, so `latest` later means this run's)."""
    found = list_checkpoints(folder)
    for path in found:
        path.unlink(missing_ok=True)
    return len(found)


def resolve_resume(resume: str, folder: Path) -> Path | None:
    """`train.resume`: "" = start fresh, "latest" = the newest checkpoint in `folder` (fresh if none), or a path."""
    if not resume:
        return None
    if resume == "latest":
        found = list_checkpoints(folder)
        return found[-1] if found else None
    path = Path(resume)
    if not path.is_file():
        raise FileNotFoundError(f"train.resume: checkpoint {path} does not exist")
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)
