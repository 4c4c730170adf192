"""A trained model loaded from the train stage's `model.pt`: the PairModel (with the geometry's similarity), its
params, shard index and learned logit scale, for evaluation, registration and search."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from multigeometry.config import Params, params_from_dict
from multigeometry.data.reads import needs_tokens
from multigeometry.geometry.distribution import Distribution
from multigeometry.models.pair_model import PairModel


@dataclass
class TrainedModel:
    model: PairModel
    params: Params
    index: dict[str, Any]
    tokenizer: Any | None
    info: dict[str, Any]
    logit_scale: float = 1.0  # the loss's learned temperature, as trained (retrieval ranks by the similarity alone)

    @property
    def modalities(self) -> list[str]:
        return self.model.modalities

    def similarity(self, a: Distribution, b: Distribution) -> Tensor:
        """All pairs' similarities (rows of `a` against rows of `b`) in the model's geometry, before the logit scale."""
        return self.model.similarity(a, b)

    def to(self, device: torch.device | str) -> TrainedModel:
        self.model.to(device)
        return self


def load_trained(path: str | Path, device: torch.device | str = "cpu") -> TrainedModel:
    """The model the train stage saved at `path` (`model.pt` or `best/model.pt`), in eval mode on `device`."""
    from multigeometry.data.collate import load_tokenizer

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no trained model here; run the train stage first")
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing = {"model", "params", "index", "logit_scale"} - set(state)
    if missing:
        raise ValueError(f"{path}: not a multigeometry model file, it lacks {sorted(missing)}")
    params = params_from_dict(state["params"])
    tokenizer = load_tokenizer(params.loader.tokenizer) if needs_tokens(params) else None
    model = PairModel.from_index(params, state["index"], vocab_size=len(tokenizer) if tokenizer is not None else None)
    model.load_state_dict(state["model"])
    trained = TrainedModel(model, params, state["index"], tokenizer, dict(state.get("info", {})),
                           float(torch.as_tensor(state["logit_scale"])))
    model.eval()
    return trained.to(device)
