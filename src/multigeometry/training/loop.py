"""The training loop, top to bottom: set up, then for each step take `accum_freq` batches, compute the loss over
their union, step, and now and then validate, checkpoint and log.

Runs the same on one CPU process, under `torchrun` with Gloo on CPU, or with NCCL on GPUs (bf16 autocast there).
Resuming restores the model, optimizer, scheduler, every rank's RNG state and the position in the epoch, so a run
killed and resumed ends with the same weights as one that never stopped (bit for bit on CPU).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from multigeometry.config import Params
from multigeometry.data.collate import load_tokenizer
from multigeometry.data.datasets import IterableStylePairDataset, make_loader
from multigeometry.data.reads import needs_tokens
from multigeometry.data.shard_index import read_index
from multigeometry.distributed import init_from_env, local_only
from multigeometry.io import write_json_atomic
from multigeometry.losses import MainCriterion
from multigeometry.models.pair_model import PairModel
from multigeometry.paths import (
    CHECKPOINTS,
    LOSS_PLOT,
    MODEL_FILE,
    RESOLVED_PARAMS,
    TRAIN_METRICS,
    models_dir,
    run_reports_dir,
    shards_dir,
)
from multigeometry.threads import apply_threads
from multigeometry.tracking import Tracker, default_tracking_uri, system_info
from multigeometry.training.checkpoint import (
    check_resumable,
    clear_checkpoints,
    load_resume,
    remove_stale_temps,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from multigeometry.training.kernel_fit import fit_kernels
from multigeometry.training.objective import TrainModule, accumulated_backward
from multigeometry.training.optim import make_optimizer, make_scheduler
from multigeometry.training.validation import validate_model

log = logging.getLogger(__name__)
# the compositional layer's entries in the model's state dict (selected on its own: train.composer_select)
COMPOSER = "composer."


@dataclass
class Runtime:
    rank: int
    world_size: int
    device: torch.device
    autocast_dtype: torch.dtype | None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_runtime(params: Params) -> Runtime:
    """torchrun's environment decides the ranks; NCCL on CUDA, Gloo on CPU."""
    cfg = params.train
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    apply_threads(cfg.threads, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    init_from_env(use_cuda)
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and use_cuda)
    return Runtime(rank, world_size, device, torch.bfloat16 if bf16 else None)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def steps_per_epoch(num_samples: int, batch_size: int, world_size: int, accum_freq: int) -> int:
    steps = num_samples // (batch_size * world_size * accum_freq)
    if steps < 1:
        raise ValueError(
            f"{num_samples} training samples are fewer than one step of loader.batch_size={batch_size} x "
            f"{world_size} rank(s) x train.accum_freq={accum_freq}"
        )
    return steps


def resolve_batch_size(params: Params, index: dict[str, Any], world_size: int) -> Params:
    """`loader.batch_size: 0` is the whole training split in one step (across ranks and accumulated micro-batches):
    the params with that size written in, as the run records them."""
    if params.loader.batch_size:
        return params
    samples = int(index["splits"]["train"]["samples"])
    size = max(1, samples // (world_size * params.train.accum_freq))
    return dataclasses.replace(params, loader=dataclasses.replace(params.loader, batch_size=size))


def compile_encoders(model: PairModel, backend: str = "inductor") -> None:
    """torch.compile each encoder in place (`nn.Module.compile` keeps the state dict's keys, so checkpoints and the
    registered model stay interchangeable with eager ones)."""
    for encoder in model.encoders.values():
        encoder.compile(dynamic=True, backend=backend)


def epoch_batches(dataset: IterableStylePairDataset, params: Params, epoch: int, tokenizer: Any) -> Any:
    """The epoch's batches; the loader's own seed depends on the epoch alone, so a resumed run replays it exactly."""
    dataset.set_epoch(epoch)
    return iter(make_loader(dataset, params, tokenizer=tokenizer, seed=params.seed * 100_003 + epoch))


class Trainer:
    def __init__(self, params: Params, root: Path = Path(".")) -> None:
        self.rt = setup_runtime(params)
        shards = shards_dir(params, root)
        self.index = read_index(shards)
        params = resolve_batch_size(params, self.index, self.rt.world_size)
        self.params, self.cfg, self.root = params, params.train, Path(root)
        seed_everything(params.seed)
        self.out = models_dir(params, root)
        self.checkpoints = self.out / CHECKPOINTS
        self.tokenizer = load_tokenizer(params.loader.tokenizer) if needs_tokens(params) else None
        vocab = len(self.tokenizer) if self.tokenizer is not None else None
        model = PairModel.from_index(params, self.index, vocab_size=vocab)
        self.fitted = self._fit_kernels(model, shards) if params.model.uses_kernel(model.modalities) else {}
        criterion = MainCriterion(params.loss, params.model, similarity=model.similarity)
        self.module = TrainModule(model, criterion).to(self.rt.device)
        if self.cfg.compile:
            compile_encoders(model)
        self.optimizer = make_optimizer([self.module], self.cfg)
        resampled = params.loader.resampled or self.rt.world_size > 1  # equal batch counts on every rank
        self.train_set = IterableStylePairDataset(
            shards, "train", params, train=True, rank=self.rt.rank, world_size=self.rt.world_size, resampled=resampled
        )
        self.val_set = (
            IterableStylePairDataset(shards, "val", params, train=False, rank=0, world_size=1, resampled=False)
            if "val" in self.index["splits"]
            else None
        )
        self.steps_per_epoch = steps_per_epoch(
            self.train_set.num_samples, params.loader.batch_size, self.rt.world_size, self.cfg.accum_freq
        )
        self.total_steps = self.cfg.max_steps or self.cfg.epochs * self.steps_per_epoch
        self.scheduler = make_scheduler(self.optimizer, self.cfg, self.total_steps)
        self.ddp = (
            torch.nn.parallel.DistributedDataParallel(self.module, find_unused_parameters=True)
            if self.rt.world_size > 1
            else None
        )
        self.step = 0
        self.tracking: dict[str, Any] = {}
        self.best: float | None = None
        self.best_state: dict[str, Any] | None = None  # the best validated weights (train.select: best)
        self.best_step = 0
        # the compositional layer's own best (train.composer_select: own): lowest val/composition, its step, weights
        self.best_composer: float | None = None
        self.best_composer_step = 0
        self.best_composer_state: dict[str, Any] | None = None
        self.stale_validations = 0  # validations since the best one (train.patience)
        self.history: list[dict[str, float]] = []
        self.run_id: str | None = None  # the MLflow run, recorded in checkpoints so that a resumed run continues it
        if self.val_set is None:
            log.warning("train: %s has no val split: no validation, the last model is kept (train.select, "
                        "train.patience need one; shard.val_from_train carves one from train)", shards)

    def _fit_kernels(self, model: PairModel, shards: Path) -> dict[str, str]:
        """The kernel trunks' anchors and closed-form start from the unaugmented train split (all ranks alike)."""
        train_once = IterableStylePairDataset(shards, "train", self.params, train=False, rank=0, world_size=1,
                                              resampled=False)
        loader = make_loader(train_once, self.params, tokenizer=self.tokenizer, workers=0, seed=self.params.seed)
        return fit_kernels(model, loader, self.params.pairs.pairs, self.params.seed)

    # -----------------------------------------------------------------------------------------------------------------

    def run(self) -> Path:
        from multigeometry.processes import Terminated

        if self.rt.is_main:
            remove_stale_temps(self.out)
        resumed = load_resume(self.cfg.resume, self.checkpoints)
        rng_after_skip, resume_run_id = None, None
        if resumed is not None:
            path, state = resumed
            check_resumable(path, state, self.params.to_dict())
            rng_after_skip = self._restore(path, state)
            resume_run_id = state.get("mlflow_run_id")
        elif self.rt.is_main and (stale := clear_checkpoints(self.checkpoints)):
            # the folder is not a DVC output (a persistent one would turn off DVC's run cache for the stage)
            log.info("fresh run: removed %d checkpoint(s) of an earlier run from %s", stale, self.checkpoints)
        tracker = Tracker(
            self.rt.is_main,
            self.cfg.tracking_uri or default_tracking_uri(self.root),
            self.cfg.experiment,
            self.cfg.run_name,
            run_dir=self.out,
            resume_run_id=resume_run_id,
        )
        self.run_id = tracker.run_id
        self.tracking = {"mlflow_run_id": tracker.run_id, "mlflow_tracking_uri": tracker.uri}
        try:
            tracker.params(self.params.to_dict())
            tracker.system(system_info(self.rt.device, self.rt.world_size))
            self._loop(tracker, rng_after_skip)
            final = self._finish(tracker)
        except (Terminated, KeyboardInterrupt):
            tracker.finish("KILLED")
            raise
        except BaseException:
            tracker.finish("FAILED")
            raise
        tracker.finish()
        return final

    def _loop(self, tracker: Tracker, rng_after_skip: dict | None) -> None:
        from tqdm import tqdm

        batch_size = self.params.loader.batch_size * self.rt.world_size * self.cfg.accum_freq
        progress = tqdm(
            total=self.total_steps, initial=self.step, desc="train", unit="step", disable=not self.rt.is_main or None
        )
        pace = ProgressLog(self.total_steps, self.step)
        # the closed-form start of model.trunk: kernel is a candidate like any step
        if self.step == 0 and self.val_set is not None and any(self.fitted.values()):
            self.history.append({"step": 0})
            self._validate(tracker)
        while self.step < self.total_steps and not self._patience_out():
            epoch, position = divmod(self.step, self.steps_per_epoch)
            batches = epoch_batches(self.train_set, self.params, epoch, self.tokenizer)
            for _ in range(position * self.cfg.accum_freq):  # the data position of a resumed run
                next(batches)
            if rng_after_skip is not None:
                set_rng_state(rng_after_skip)
                rng_after_skip = None
            for _ in range(position, self.steps_per_epoch):
                if self.step >= self.total_steps or self._patience_out():
                    break
                group = list(islice(batches, self.cfg.accum_freq))
                if len(group) < self.cfg.accum_freq:
                    break
                started = time.perf_counter()
                terms = self._train_step(group)
                elapsed = time.perf_counter() - started
                self.step += 1
                metrics = {f"train/{k}": float(v.detach()) for k, v in terms.items()}
                metrics["train/lr"] = self.scheduler.get_last_lr()[0]
                metrics["train/samples_per_s"] = batch_size / max(elapsed, 1e-9)
                metrics["train/samples_per_s_per_rank"] = metrics["train/samples_per_s"] / self.rt.world_size
                if self.step % self.cfg.log_every == 0 or self.step == self.total_steps:
                    tracker.metrics(metrics, self.step)
                self.history.append({"step": self.step, **metrics})
                progress.set_postfix(
                    loss=f"{metrics['train/loss']:.3f}", samples_s=f"{metrics['train/samples_per_s']:.0f}"
                )
                progress.update()
                if self.rt.is_main and (self.step % self.cfg.log_every == 0 or self.step == self.total_steps):
                    pace.line(self.step, metrics)
                if self.step % self.cfg.val_every == 0 or self.step == self.total_steps:
                    self._validate(tracker)
                if self.step % self.cfg.checkpoint_every == 0 or self.step == self.total_steps:
                    self._checkpoint()
        progress.close()

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.rt.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.rt.device.type, dtype=self.rt.autocast_dtype)

    def _train_step(self, group: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batches = [b.to(self.rt.device) for b in group]
        self.module.criterion.step = self.step
        self.optimizer.zero_grad(set_to_none=True)
        terms = accumulated_backward(self.module, batches, self.ddp, self._autocast)
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.module.criterion.clamp_logit_scale_()
        return terms

    def _validate(self, tracker: Tracker) -> None:
        if self.val_set is None or not self.rt.is_main:
            return
        loader = make_loader(self.val_set, self.params, tokenizer=self.tokenizer, workers=0, seed=self.params.seed)
        with self._autocast(), local_only():
            metrics = validate_model(self.module, loader, self.rt.device)
        tracker.metrics(metrics, self.step)
        self.history[-1].update(metrics)
        value = metrics.get(self.cfg.best_metric)
        if value is None:
            return
        better = self.best is None or (value > self.best if self.cfg.best_mode == "max" else value < self.best)
        if better:
            self.best, self.best_step, self.stale_validations = value, self.step, 0
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.module.model.state_dict().items()}
        else:
            self.stale_validations += 1
        composition = metrics.get("val/composition")
        if composition is not None and (self.best_composer is None or composition < self.best_composer):
            self.best_composer, self.best_composer_step = composition, self.step
            self.best_composer_state = {k: v.detach().to("cpu", copy=True)
                                        for k, v in self.module.model.state_dict().items() if k.startswith(COMPOSER)}

    def _patience_out(self) -> bool:
        """Early stopping: `train.patience` validations in a row without a better `train.best_metric`."""
        return self.cfg.patience > 0 and self.stale_validations >= self.cfg.patience

    # -----------------------------------------------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        states = [rng_state()]
        if self.rt.world_size > 1:
            states = [None] * self.rt.world_size
            dist.all_gather_object(states, rng_state())
        return {
            "step": self.step,
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": states,
            "best": self.best,
            "best_step": self.best_step,
            "best_state": self.best_state,
            "best_composer": self.best_composer,
            "best_composer_step": self.best_composer_step,
            "best_composer_state": self.best_composer_state,
            "stale_validations": self.stale_validations,
            "history": self.history,
            "world_size": self.rt.world_size,
            "params": self.params.to_dict(),
            "mlflow_run_id": self.run_id,
        }

    def _checkpoint(self) -> None:
        state = self._state()  # every rank takes part in gathering the RNG states
        if self.rt.is_main:
            path = save_checkpoint(self.checkpoints, self.step, state, self.cfg.keep_checkpoints)
            log.info("checkpoint %s", path)
        if self.rt.world_size > 1:
            dist.barrier()

    def _restore(self, path: Path, state: dict[str, Any]) -> dict[str, Any]:
        if state["world_size"] != self.rt.world_size:
            raise ValueError(f"{path}: saved by {state['world_size']} rank(s), resumed with {self.rt.world_size}")
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.best, self.history = state["step"], state["best"], list(state["history"])
        self.best_step, self.best_state = state["best_step"], state["best_state"]
        self.stale_validations = state["stale_validations"]
        self.best_composer = state.get("best_composer")
        self.best_composer_step = state.get("best_composer_step", 0)
        self.best_composer_state = state.get("best_composer_state")
        log.info("resumed from %s at step %d", path, self.step)
        return state["rng"][self.rt.rank]

    def _save_model(self, path: Path, info: dict[str, Any], state: dict[str, Any] | None = None) -> None:
        from multigeometry.io import atomic_path

        with atomic_path(path) as tmp:
            torch.save(
                {
                    "model": self.module.model.state_dict() if state is None else state,
                    "logit_scale": self.module.criterion.logit_scale(),
                    "params": self.params.to_dict(),
                    "index": self.index,
                    "info": {**info, **self.tracking},  # the MLflow run: the registry links a version to it
                },
                tmp,
            )

    def _finish(self, tracker: Tracker) -> Path:
        if not self.rt.is_main:
            return self.out
        final = self.out / MODEL_FILE
        selected = self._selected()
        state = None
        if selected["model"] == "best":
            state = self.best_state
            if "composer" in selected:
                state = {**self.best_state, **self.best_composer_state}
        self._save_model(final, {"step": self.step, "selected": selected}, state)
        last = self.history[-1] if self.history else {}
        summary = {k: v for k, v in last.items() if k != "step"} | {
            "step": self.step, "best": self.best, "selected": selected
        }
        reports = run_reports_dir(self.params, self.root)
        write_json_atomic(reports / TRAIN_METRICS, summary)
        write_json_atomic(self.out / RESOLVED_PARAMS, self.params.to_dict())
        _write_curve(reports / LOSS_PLOT, self.history)
        tracker.artifact(self.out / RESOLVED_PARAMS)
        tracker.artifact(reports / TRAIN_METRICS, "metrics")
        tracker.artifact(final, "model")
        return self.out


    def _selected(self) -> dict[str, Any]:
        """Which weights model.pt holds (`train.select`) and why."""
        stopped = self._patience_out()
        if self.cfg.select == "best" and self.best_state is not None:
            selected = {"model": "best", "step": self.best_step, self.cfg.best_metric: self.best,
                        "early_stopped": stopped}
            if self.cfg.composer_select == "own" and self.best_composer_state:
                selected["composer"] = {"step": self.best_composer_step, "val/composition": self.best_composer}
                log.info("train: model.pt holds step %d's weights, its compositional layer step %d's (train."
                         "composer_select: own)", self.best_step, self.best_composer_step)
            return selected
        reason = "train.select: last" if self.cfg.select == "last" else f"no {self.cfg.best_metric} (no val split)"
        log.info("train: model.pt holds the last weights (%s)", reason)
        return {"model": "last", "step": self.step, "reason": reason, "early_stopped": stopped}


class ProgressLog:
    """A log line every `train.log_every` steps, for runs without a terminal (where tqdm shows nothing): step, loss,
    samples/s and the time left, as OpenCLIP logs."""

    def __init__(self, total_steps: int, start_step: int) -> None:
        self.total, self.start, self.started = total_steps, start_step, time.perf_counter()

    def eta_s(self, step: int) -> float:
        done = step - self.start
        return (time.perf_counter() - self.started) / done * (self.total - step) if done > 0 else float("nan")

    def line(self, step: int, metrics: dict[str, float]) -> str:
        eta = self.eta_s(step)
        text = (f"step {step}/{self.total} ({100 * step / max(self.total, 1):.0f}%) loss {metrics['train/loss']:.4f} "
                f"lr {metrics['train/lr']:.3g} {metrics['train/samples_per_s']:.1f} samples/s "
                f"eta {'?' if math.isnan(eta) else _duration(eta)}")
        log.info("%s", text)
        return text


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _write_curve(path: Path, history: list[dict[str, float]]) -> None:
    from multigeometry.io import atomic_path

    columns = ["step", "train/loss", "train/lr"] + sorted({k for h in history for k in h if k.startswith("val/")})
    with atomic_path(path) as tmp:
        lines = [",".join(c.replace("/", "_").replace("@", "_at_") for c in columns)]
        for h in history:
            lines.append(",".join("" if h.get(c) is None else f"{h[c]:.6g}" for c in columns))
        tmp.write_text("\n".join(lines) + "\n")


def train_model(params: Params, root: Path = Path(".")) -> Path:
    try:
        return Trainer(params, root).run()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def read_train_metrics(params: Params, root: Path = Path(".")) -> dict[str, Any]:
    return json.loads((run_reports_dir(params, root) / TRAIN_METRICS).read_text())
