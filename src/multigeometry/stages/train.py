"""Stage `train`: a PairModel on the shards; checkpoints, the final model, metrics and loss curves under
`data/models/<run>/`, tracked in MLflow. DVC runs it under `torchrun --nproc-per-node=${train.nproc}`."""

from __future__ import annotations

from pathlib import Path

from multigeometry.config import Params


def train(params: Params, root: Path = Path(".")) -> Path:
    from multigeometry.training.loop import train_model

    return train_model(params, root)
