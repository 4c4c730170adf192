"""Checkpoints: atomic writes, every rank's RNG state, and loading with `weights_only=True`.

Resuming is safe: `train.resume: latest` skips a checkpoint that does not load (with a warning naming it) for the
previous complete one, and a checkpoint records the params it was trained with, so that resuming with other params
is refused with the keys that differ, except `RESUMABLE_KEYS`, which may change on resume.
"""

from __future__ import annotations

import logging
import pickle
import random
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from multigeometry.io import atomic_path

log = logging.getLogger(__name__)

_NAME = re.compile(r"step-(\d+)\.pt")
# the params the train stage reads (dvc.yaml's train stage): a checkpoint is resumed only with the same values
TRAIN_SECTIONS = ("seed", "data.dataset", "pairs", "loader", "model", "loss", "train")
# how long and how often, not what: these may change when a run is resumed
RESUMABLE_KEYS = ("train.epochs", "train.max_steps", "train.checkpoint_every", "train.keep_checkpoints",
                  "train.resume", "train.val_every", "train.log_every")
STATE_KEYS = ("step", "model", "optimizer", "scheduler", "rng", "history", "world_size")
_UNREADABLE = (RuntimeError, EOFError, OSError, ValueError, KeyError, pickle.UnpicklingError, zipfile.BadZipFile)


class ResumeError(ValueError):
    """A checkpoint that cannot be resumed with these params, or none that loads."""


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


def _load_whole(path: Path) -> dict[str, Any]:
    state = load_checkpoint(path)
    missing = [k for k in STATE_KEYS if k not in state] if isinstance(state, dict) else list(STATE_KEYS)
    if missing:
        raise KeyError(f"not a training checkpoint: it lacks {missing}")
    return state


def load_resume(resume: str, folder: Path) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint `train.resume` names and its state, or None to start fresh. With "latest", a checkpoint that
    does not load (cut by a full disk, a copy, a kill outside our atomic writes) is skipped with a warning for the one
    before it; an explicit path that does not load is an error."""
    if resume and resume != "latest":
        path = resolve_resume(resume, folder)
        assert path is not None
        try:
            return path, _load_whole(path)
        except _UNREADABLE as e:
            raise ResumeError(f"train.resume: {path} does not load ({type(e).__name__}: {e})") from e
    if not resume:
        return None
    found = list_checkpoints(folder)
    for path in reversed(found):
        try:
            return path, _load_whole(path)
        except _UNREADABLE as e:
            log.warning("%s: unreadable checkpoint (%s: %s); falling back to the previous one", path,
                        type(e).__name__, str(e)[:200])
    if found:
        raise ResumeError(f"train.resume=latest: none of the {len(found)} checkpoints in {folder} loads")
    return None


def changed_params(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The train stage's params whose value differs between a checkpoint's and the current ones (dotted key ->
    (saved, current)), leaving out `RESUMABLE_KEYS`."""
    from multigeometry.tracking import flatten

    old, new = flatten(saved), flatten(current)
    changed = {}
    for key in sorted(set(old) | set(new)):
        ours = any(key == s or key.startswith(f"{s}.") for s in TRAIN_SECTIONS)
        if ours and key not in RESUMABLE_KEYS and old.get(key) != new.get(key):
            changed[key] = (old.get(key), new.get(key))
    return changed


def check_resumable(path: Path, state: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse to resume `state` (from `path`) with params other than its own, naming the keys that differ."""
    if "params" not in state:
        log.warning("%s records no params (an older checkpoint): resuming without comparing them", path)
        return
    changed = changed_params(state["params"], current)
    if changed:
        listed = ", ".join(f"{k} ({old!r} -> {new!r})" for k, (old, new) in changed.items())
        raise ResumeError(
            f"{path}: saved with other params; changed: {listed}. Only {', '.join(RESUMABLE_KEYS)} may change on "
            "resume: restore the others, or start a new run (train.resume: '' or another train.run_name)")


def remove_stale_temps(run_dir: Path) -> list[Path]:
    """Files a killed run left half-written in its folder: checkpoints (`checkpoints/.step-*.tmp`) and the atomic
    writes' temporary files of the model, the best model, metrics and plots (`.<name>.<random>.tmp`)."""
    run_dir = Path(run_dir)
    folders = [run_dir / "checkpoints", run_dir, run_dir / "best", run_dir / "metrics", run_dir / "plots"]
    stale = sorted(p for f in folders if f.is_dir() for p in f.glob(".*.tmp") if p.is_file())
    for path in stale:
        path.unlink(missing_ok=True)
        log.info("removed %s, a file a killed run left half-written", path)
    return stale
