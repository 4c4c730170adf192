"""A Hugging Face `datasets` source (`data.source: hf:<name>`), with a column mapping from `data.hf`.

`<name>` is one of:
- a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`: loaded with `load_from_disk`;
- anything `datasets.load_dataset` takes: a Hub id (`nlphuji/flickr30k`, optionally `@<revision>`), a packaged builder
  (`parquet`, `json`, `csv`, `imagefolder`, `audiofolder`, ...) used with `data.hf.data_files`, or a local folder.

Layouts (`data.hf.layout`) give default columns; `data.hf.columns` (modality -> column) overrides them:
- `flickr30k`: an `image` and a list of captions (`caption`) -> one row per caption, sharing the image's group
  (`img_id`); the dataset's own `split` column (Karpathy splits) gives the splits;
- `audio_caption`: an `audio` and one caption column (`caption`, AudioCaps) or several (`caption_1` ... `caption_5`,
  Clotho) -> one row per caption, sharing a group (`youtube_id` or `file_name` where present, else the dataset row);
- `code_docstring`: code (`func_code_string`) and its docstring (`func_documentation_string`), CodeSearchNet style;
  the docstring is taken out of the code and the text is its first paragraph; splits from `split_name`; hierarchy
  `repository_name` > `func_path_in_repository`;
- `generic`: only what `data.hf.columns` maps. A `text` mapping may name several columns, comma-separated.

Media are written as they are stored: an `Image` column is read with `Image(decode=False)` and its encoded bytes are
written unchanged (extension from the format), an `Audio` column is read with `Audio(decode=False)` (datasets 5 decodes
audio with torchcodec, which this project does not use) and its bytes written or its file copied, extension kept; a
`video` column (a `Video` feature read with `Video(decode=False)`, bytes, a path, or {bytes, path}) likewise, and a row
with a clip but no audio takes the clip's audio track, when it has one, as its audio.
Only media that arrive decoded (arrays, PIL images without bytes) are encoded here (PNG, FLAC).

Splits: from `data.hf.split_column` (or the layout's) if set, else from the dataset's own splits when it has several;
each split name goes through `data.hf.split_names` (on top of the usual names: validation/valid/dev -> val, ...),
a name that maps to nothing is an error, one mapped to "" drops its rows. A dataset with a single split (what a list
of data files gives) gets its splits assigned per group, like any source without splits.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from multigeometry.config import MODALITIES, SPLITS, HFConfig
from multigeometry.data.manifest import ManifestRow
from multigeometry.data.sources.media import (
    audio_extension,
    audio_from_video,
    copy_media,
    encode_audio,
    encode_image,
    image_extension,
    media_path,
    media_stem,
    write_media,
)
from multigeometry.data.sources.stdlib_code import code_without_docstring, first_paragraph
from multigeometry.data.video import video_extension

if TYPE_CHECKING:
    from datasets import Dataset

log = logging.getLogger(__name__)

# dataset split names every source understands; data.hf.split_names adds to them and overrides them
DEFAULT_SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}
_NUMBERED_CAPTION = re.compile(r"^caption_?(\d+)$")


class HFSourceError(ValueError):
    """A Hugging Face source that cannot be read as configured; the message names the key, column or row."""


@dataclass(frozen=True)
class Layout:
    """Default columns of a dataset layout: for each role, candidate column names, the first one present wins."""

    columns: dict[str, tuple[str, ...]] = field(default_factory=dict)
    split: tuple[str, ...] = ()
    group: tuple[str, ...] = ()
    hierarchy: tuple[tuple[str, ...], ...] = ()  # one tuple of candidates per level, most general first
    numbered_captions: bool = False  # caption_1, caption_2, ... are the text columns when present
    required: tuple[str, ...] = ()
    code_docstring: bool = False  # take the docstring out of the code; the text is its first paragraph


LAYOUTS: dict[str, Layout] = {
    "flickr30k": Layout(
        columns={"image": ("image",), "text": ("caption", "captions", "alt_text", "sentences", "raw")},
        split=("split",),
        group=("img_id", "image_id", "filename"),
        required=("image", "text"),
    ),
    "audio_caption": Layout(
        columns={"audio": ("audio",), "text": ("caption", "captions", "text")},
        split=("split",),
        group=("youtube_id", "file_name", "filename"),
        numbered_captions=True,
        required=("audio", "text"),
    ),
    "code_docstring": Layout(
        columns={
            "code": ("func_code_string", "whole_func_string", "original_string", "code"),
            "text": ("func_documentation_string", "docstring"),
        },
        split=("split_name",),
        hierarchy=(("repository_name", "repo"), ("func_path_in_repository", "path")),
        required=("code", "text"),
        code_docstring=True,
    ),
    "generic": Layout(),
}


@dataclass(frozen=True)
class Plan:
    """Which dataset columns feed which manifest fields."""

    image: str | None = None
    audio: str | None = None
    code: str | None = None
    video: str | None = None
    text: tuple[str, ...] = ()
    split: str | None = None
    group: str | None = None
    hierarchy: tuple[str, ...] = ()
    code_docstring: bool = False

    def columns(self) -> list[str]:
        named = [self.image, self.audio, self.code, self.video, *self.text, self.split, self.group, *self.hierarchy]
        return list(dict.fromkeys(c for c in named if c))


# ---------------------------------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------------------------------


def is_saved_dataset(path: Path) -> bool:
    """Whether `path` is a folder written by `save_to_disk` (a Dataset or a DatasetDict)."""
    if not path.is_dir():
        return False
    saved_dataset = (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    return saved_dataset or (path / "dataset_dict.json").is_file()


def _data_files(cfg: HFConfig) -> list[str] | dict[str, list[str]] | None:
    """`data.hf.data_files` as load_dataset wants it: a list, or `split=pattern` entries as a mapping by split."""
    if not cfg.data_files:
        return None
    names = set(DEFAULT_SPLIT_NAMES) | set(cfg.split_names)
    by_split: dict[str, list[str]] = {}
    plain: list[str] = []
    for entry in cfg.data_files:
        prefix, sep, rest = entry.partition("=")
        if sep and prefix in names and rest:
            by_split.setdefault(prefix, []).append(rest)
        else:
            plain.append(entry)
    if by_split and plain:
        raise HFSourceError(
            f"data.hf.data_files: mix of 'split=pattern' entries and plain patterns {plain}; give every entry a split "
            "or none"
        )
    return by_split or plain


def _torchcodec_usable() -> bool:
    if importlib.util.find_spec("torchcodec") is None:
        return False
    try:
        import torchcodec.encoders  # noqa: F401
    except Exception:  # installed but unusable (no FFmpeg libraries): the import fails in several ways
        return False
    return True


@contextlib.contextmanager
def audio_encoding_without_torchcodec() -> Iterator[None]:
    """Let `datasets` build an audio dataset (`audiofolder`, `from_dict` with paths) without torchcodec installed.

    datasets 5's `Audio.encode_example` imports torchcodec first thing, though it needs it only to encode decoded
    arrays: a path, bytes or a {path, bytes} dict are stored as they are. While this context is open, those inputs
    are stored the same way without the import; anything else still goes to the original method. With torchcodec
    installed, nothing is changed.
    """
    if _torchcodec_usable():
        yield
        return
    from datasets.features.audio import Audio

    original = Audio.encode_example

    def encode_example(self: Audio, value: Any) -> dict:
        if isinstance(value, str):
            return {"bytes": None, "path": value}
        if isinstance(value, Path):
            return {"bytes": None, "path": str(value.absolute())}
        if isinstance(value, (bytes, bytearray)):
            return {"bytes": bytes(value), "path": None}
        if isinstance(value, dict) and "array" not in value and (value.get("bytes") or value.get("path")):
            if str(value.get("path") or "").endswith("pcm"):
                return original(self, value)  # raw PCM needs re-encoding to WAV
            return {"bytes": value.get("bytes"), "path": value.get("path")}
        return original(self, value)

    Audio.encode_example = encode_example
    try:
        yield
    finally:
        Audio.encode_example = original


def load_parts(name: str, cfg: HFConfig) -> list[tuple[str | None, Dataset]]:
    """The dataset `name` as (split name, Dataset) parts: every split of a DatasetDict, or one part."""
    from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

    local = Path(name).expanduser()
    if is_saved_dataset(local):
        if cfg.data_files or cfg.config:
            log.warning("hf: %s was written by save_to_disk; data.hf.data_files and data.hf.config do not apply", local)
        loaded: Any = load_from_disk(str(local))
        if cfg.load_split and isinstance(loaded, DatasetDict):
            if cfg.load_split not in loaded:
                raise HFSourceError(
                    f"data.hf.load_split: {cfg.load_split!r} is not a split of {local}; its splits: {list(loaded)}"
                )
            loaded = loaded[cfg.load_split]
    else:
        path, revision = name, None
        if not local.exists() and "@" in name:
            path, _, revision = name.partition("@")
        kwargs = {
            "name": cfg.config or None,
            "data_files": _data_files(cfg),
            "split": cfg.load_split or None,
            "revision": revision or None,
        }
        log.info("hf: load_dataset(%r, %s)", path, ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if v))
        from multigeometry.hub import dataset_unavailable, hub_reachable

        hub_reachable()  # no hub: offline mode at once (the cache answers), not five retries a file
        try:
            with audio_encoding_without_torchcodec():
                loaded = load_dataset(path, **kwargs)
        except (ConnectionError, OSError) as e:
            better = dataset_unavailable(name, e)
            if better is None:
                raise
            raise better from e
        except RuntimeError as e:
            if "scripts are no longer supported" in str(e):
                raise HFSourceError(
                    f"data.source hf:{name}: this Hub dataset is a loading script, which datasets 5 cannot run. Load "
                    f"its Parquet export instead: `hf:{path}@refs/convert/parquet`, or `hf:parquet` with "
                    f"data.hf.data_files: ['hf://datasets/{path}@refs%2Fconvert%2Fparquet/<config>/<split>/*.parquet']"
                ) from e
            raise
    if isinstance(loaded, DatasetDict):
        return list(loaded.items())
    if isinstance(loaded, Dataset):
        return [(cfg.load_split or None, loaded)]
    raise HFSourceError(f"data.source hf:{name}: expected a Dataset or DatasetDict, got {type(loaded).__name__}")


# ---------------------------------------------------------------------------------------------------------------------
# columns and splits
# ---------------------------------------------------------------------------------------------------------------------


def plan_columns(cfg: HFConfig, available: list[str]) -> Plan:
    """Resolve the layout's defaults and `data.hf`'s explicit columns against the dataset's columns."""
    layout = LAYOUTS[cfg.layout]
    listed = f"the dataset's columns: {available}"

    def require(key: str, names: list[str]) -> None:
        missing = [c for c in names if c not in available]
        if missing:
            raise HFSourceError(f"data.hf.{key}: column(s) {missing} not in the dataset; {listed}")

    def first(candidates: tuple[str, ...]) -> str | None:
        return next((c for c in candidates if c in available), None)

    unknown = [k for k in cfg.columns if k not in MODALITIES]
    if unknown:
        raise HFSourceError(f"data.hf.columns: unknown modality key(s) {unknown}; allowed: {', '.join(MODALITIES)}")
    chosen: dict[str, tuple[str, ...]] = {}
    for modality in MODALITIES:
        if modality in cfg.columns:
            names = [c.strip() for c in cfg.columns[modality].split(",") if c.strip()]
            if modality != "text" and len(names) != 1:
                raise HFSourceError(f"data.hf.columns.{modality}: expected one column, got {cfg.columns[modality]!r}")
            require(f"columns.{modality}", names)
            chosen[modality] = tuple(names)
            continue
        if modality == "text" and layout.numbered_captions:
            numbered = sorted(
                (c for c in available if _NUMBERED_CAPTION.match(c)), key=lambda c: int(_NUMBERED_CAPTION.match(c)[1])
            )
            if numbered:
                chosen["text"] = tuple(numbered)
                continue
        found = first(layout.columns.get(modality, ()))
        if found:
            chosen[modality] = (found,)
    absent = [m for m in layout.required if m not in chosen]
    if absent:
        looked = "; ".join(f"{m}: {list(layout.columns[m])}" for m in absent)
        raise HFSourceError(
            f"data.hf.layout {cfg.layout!r}: no {' and no '.join(absent)} column (looked for {looked}); set "
            f"{', '.join(f'data.hf.columns.{m}' for m in absent)}; {listed}"
        )
    if not chosen:
        raise HFSourceError(
            f"data.hf.columns: map at least one of {', '.join(MODALITIES)} to a column (layout {cfg.layout!r} "
            f"has no defaults); {listed}"
        )

    split = cfg.split_column or first(layout.split)
    if cfg.split_column:
        require("split_column", [cfg.split_column])
    group = cfg.group_column or first(layout.group)
    if cfg.group_column:
        require("group_column", [cfg.group_column])
    if cfg.hierarchy_columns:
        require("hierarchy_columns", list(cfg.hierarchy_columns))
        hierarchy = tuple(cfg.hierarchy_columns)
    else:
        hierarchy = tuple(c for level in layout.hierarchy if (c := first(level)))
    return Plan(
        image=chosen.get("image", (None,))[0],
        audio=chosen.get("audio", (None,))[0],
        code=chosen.get("code", (None,))[0],
        video=chosen.get("video", (None,))[0],
        text=chosen.get("text", ()),
        split=split,
        group=group,
        hierarchy=hierarchy,
        code_docstring=layout.code_docstring,
    )


def split_mapping(cfg: HFConfig) -> dict[str, str]:
    """Dataset split name -> manifest split ('' drops the rows): the usual names plus `data.hf.split_names`."""
    for key, value in cfg.split_names.items():
        if value not in (*SPLITS, ""):
            raise HFSourceError(
                f"data.hf.split_names.{key}: {value!r} is not one of {', '.join(SPLITS)} (or '' to leave the rows out)"
            )
    return {**DEFAULT_SPLIT_NAMES, **cfg.split_names}


def map_split(mapping: dict[str, str], value: Any, where: str) -> str:
    key = str(value).strip() if value is not None else None
    if key is None or key not in mapping:
        raise HFSourceError(
            f"data.hf.split_names: dataset split {value!r} ({where}) maps to no split; known names: "
            f"{sorted(mapping)}. Map it to train, val or test (or to '' to leave its rows out) in data.hf.split_names"
        )
    return mapping[key]


def row_quotas(sizes: list[int], max_rows: int) -> list[int]:
    """How many rows to take from each part: all (max_rows 0), else max_rows spread in proportion to the sizes."""
    total = sum(sizes)
    if max_rows == 0 or max_rows >= total:
        return list(sizes)
    quotas = [size * max_rows // total for size in sizes]
    # hand the remainder out by largest fractional part, then in order
    order = sorted(range(len(sizes)), key=lambda i: (-(sizes[i] * max_rows % total), i))
    for i in order[: max_rows - sum(quotas)]:
        quotas[i] += 1
    return quotas


# ---------------------------------------------------------------------------------------------------------------------
# values
# ---------------------------------------------------------------------------------------------------------------------


def _label(feature: Any, value: Any) -> Any:
    """A ClassLabel's name instead of its index; anything else unchanged."""
    from datasets import ClassLabel

    if isinstance(feature, ClassLabel) and isinstance(value, int) and value >= 0:
        return feature.int2str(value)
    return value


def _texts(value: Any, json_lists: bool) -> list[str]:
    """The captions of one cell: a string, a list of strings, or (flickr30k's CSV `raw`) a JSON-encoded list."""
    if value is None:
        return []
    if isinstance(value, str):
        if json_lists and value.lstrip().startswith("["):
            with contextlib.suppress(json.JSONDecodeError):
                decoded = json.loads(value)
                if isinstance(decoded, list):
                    return [str(v) for v in decoded if v is not None]
        return [value]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if v is not None]
    return [str(value)]


def _levels(feature: Any, value: Any) -> list[str] | None:
    """The hierarchy levels one column gives (a value or a list of values); None for a missing value."""
    if value is None:
        return None
    values = value if isinstance(value, (list, tuple)) else [value]
    inner = getattr(feature, "feature", feature)  # List(ClassLabel) -> ClassLabel
    out = [str(_label(inner, v)).strip() for v in values if v is not None]
    return [v for v in out if v] or None


def _is_local_file(path: str | None) -> bool:
    return bool(path) and "://" not in path and Path(path).is_file()


def _bytes_or_path(value: Any) -> tuple[bytes | None, str | None] | None:
    """Encoded media as a dataset hands them out ({bytes, path}, bytes, or a path): (bytes, path); None otherwise."""
    if isinstance(value, dict) and ("bytes" in value or "path" in value):
        return value.get("bytes"), value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value), None
    if isinstance(value, str):
        return None, value
    return None


class MediaWriter:
    """Writes one dataset row's image/audio/code into the staging folder; counts media that are missing."""

    def __init__(self, staging: Path) -> None:
        self.staging = staging
        self.missing = 0

    def _missing(self, modality: str, stem: str, path: str | None, where: str) -> str:
        """A path in the staging folder where nothing is written: validation quarantines the row."""
        self.missing += 1
        log.debug("hf: %s: %s %r has no bytes and no local file", where, modality, path)
        suffix = Path(path).suffix.lstrip(".") if path else ""
        return media_path(modality, stem, suffix or "bin")

    def image(self, value: Any, stem: str, where: str) -> str | None:
        from PIL import Image

        if value is None:
            return None
        given = _bytes_or_path(value)
        if given is None and (isinstance(value, Image.Image) or hasattr(value, "__array__") or isinstance(value, list)):
            return write_media(self.staging, "image", stem, encode_image(value), "png")
        if given is None:
            raise HFSourceError(f"hf: {where}: cannot read an image from a {type(value).__name__}")
        data, path = given
        if data:
            ext = image_extension(data) or (Path(path).suffix.lstrip(".") if path else "") or "bin"
            return write_media(self.staging, "image", stem, data, ext)
        if _is_local_file(path):
            source = Path(path)
            if not (ext := source.suffix.lstrip(".")):
                with source.open("rb") as f:
                    ext = image_extension(f.read(1 << 16)) or "bin"
            return copy_media(self.staging, "image", stem, source, ext)
        return self._missing("image", stem, path, where)

    def audio(self, value: Any, stem: str, where: str) -> str | None:
        if value is None:
            return None
        data, path = None, None
        if isinstance(value, dict) and "array" in value and value.get("array") is not None:
            rate = value.get("sampling_rate")
            if not rate:
                raise HFSourceError(f"hf: {where}: an audio array without a sampling_rate")
            return write_media(self.staging, "audio", stem, encode_audio(value["array"], rate), "flac")
        if isinstance(value, dict):
            data, path = value.get("bytes"), value.get("path")
        elif isinstance(value, (bytes, bytearray)):
            data = bytes(value)
        elif isinstance(value, str):
            path = value
        else:
            raise HFSourceError(f"hf: {where}: cannot read audio from a {type(value).__name__}")
        return self._store("audio", stem, data, path, where, audio_extension)

    def video(self, value: Any, stem: str, where: str) -> str | None:
        if value is None:
            return None
        given = _bytes_or_path(value)
        if given is None:
            raise HFSourceError(f"hf: {where}: cannot read a video from a {type(value).__name__} (give its encoded "
                                "bytes or a path; a decoded clip is not re-encoded)")
        return self._store("video", stem, *given, where, video_extension)

    def _store(self, modality: str, stem: str, data: bytes | None, path: str | None, where: str,
               sniff: Callable[[bytes], str | None]) -> str:
        """Encoded bytes written, or a local file copied, under the path's extension or the one its magic number
        tells; a path where nothing is, when there are neither."""
        suffix = Path(path).suffix.lstrip(".") if path else ""
        if data:
            return write_media(self.staging, modality, stem, data, suffix or sniff(data) or "bin")
        if _is_local_file(path):
            source = Path(path)
            with source.open("rb") as f:
                head = f.read(64)
            return copy_media(self.staging, modality, stem, source, suffix or sniff(head) or "bin")
        return self._missing(modality, stem, path, where)

    def code(self, value: Any, stem: str, strip_docstring: bool) -> str | None:
        if value is None:
            return None
        code = str(value)
        if strip_docstring:
            # code that is not valid Python (another language, Python 2) is kept as it is
            code = code_without_docstring(code) or code
        return write_media(self.staging, "code", stem, code.encode("utf-8"), "py")


# ---------------------------------------------------------------------------------------------------------------------
# rows
# ---------------------------------------------------------------------------------------------------------------------


def _prepared(ds: Dataset, plan: Plan) -> Dataset:
    """Only the planned columns, with Image, Audio and Video columns set to hand out their stored bytes or paths."""
    from datasets import Audio, Image, Video

    ds = ds.select_columns(plan.columns())
    for column in (plan.image, plan.audio, plan.video):
        feature = ds.features.get(column) if column else None
        if isinstance(feature, Image) and feature.decode:
            ds = ds.cast_column(column, Image(decode=False))
        elif isinstance(feature, Audio) and feature.decode:
            ds = ds.cast_column(column, Audio(decode=False))
        elif isinstance(feature, Video) and feature.decode:
            ds = ds.cast_column(column, Video(decode=False))
    return ds


def hf_rows(staging: Path, name: str, cfg: HFConfig) -> list[ManifestRow]:
    """The rows of the Hugging Face dataset `name` as `cfg` maps it, with its media written under `staging`."""
    mapping = split_mapping(cfg)
    parts = load_parts(name, cfg)
    several = len(parts) > 1
    plans: list[tuple[str | None, str | None, Dataset, Plan]] = []  # (part name, part split, dataset, plan)
    for part, ds in parts:
        plan = plan_columns(cfg, list(ds.column_names))
        part_split = None
        if plan.split:
            for value in ds.unique(plan.split):
                value = _label(ds.features[plan.split], value)
                map_split(mapping, value, f"column {plan.split!r}{f' of split {part!r}' if part else ''}")
        elif several:
            part_split = map_split(mapping, part, "a split of the dataset")
            if part_split == "":
                log.info("hf: split %r maps to '' in data.hf.split_names: its %d rows are left out", part, len(ds))
                continue
        plans.append((part, part_split, ds, plan))
    if not plans:
        raise HFSourceError(f"data.source hf:{name}: every split is left out by data.hf.split_names")

    quotas = row_quotas([len(ds) for _, _, ds, _ in plans], cfg.max_rows)
    log.info(
        "hf: %s, layout %s, columns %s; %d of %d dataset rows",
        name, cfg.layout, plans[0][3], sum(quotas), sum(len(ds) for _, _, ds, _ in plans),
    )
    writer = MediaWriter(staging)
    rows: list[ManifestRow] = []
    dropped = 0
    progress = tqdm(total=sum(quotas), desc=f"hf: {name}", unit="row", disable=None)
    for (part, part_split, ds, plan), quota in zip(plans, quotas, strict=True):
        if quota < len(ds):
            ds = ds.select(range(quota))
        features = ds.features
        ds = _prepared(ds, plan)
        prefix = f"{part}-" if several and part else ""
        for index, example in enumerate(ds):
            progress.update()
            key = f"{prefix}{index:07d}"
            where = f"split {part!r}, row {index}" if part else f"row {index}"
            split = part_split
            if plan.split:
                value = _label(features[plan.split], example[plan.split])
                split = map_split(mapping, value, f"column {plan.split!r}, {where}")
                if split == "":
                    dropped += 1
                    continue
            if plan.group:
                group_value = _label(features[plan.group], example[plan.group])
                if group_value is None or str(group_value) == "":
                    raise HFSourceError(f"hf: {where}: group column {plan.group!r} is empty")
                group_id = str(group_value)
            else:
                group_id = key
            hierarchy: list[str] = []
            for column in plan.hierarchy:
                levels = _levels(features[column], example[column])
                if levels is None:
                    break  # levels below a missing one have no place
                hierarchy.extend(levels)
            texts: list[str | None] = []
            for column in plan.text:
                texts.extend(_texts(_label(features[column], example[column]), cfg.layout == "flickr30k"))
            if plan.code_docstring:
                texts = [first_paragraph(t) for t in texts]
            if not texts:
                texts = [None]

            stem = media_stem(key)
            image = writer.image(example[plan.image], stem, where) if plan.image else None
            audio = writer.audio(example[plan.audio], stem, where) if plan.audio else None
            code = writer.code(example[plan.code], stem, plan.code_docstring) if plan.code else None
            video = writer.video(example[plan.video], stem, where) if plan.video else None
            for c, text in enumerate(texts):
                rows.append(
                    ManifestRow(
                        sample_id=key if len(texts) == 1 else f"{key}-{c}",
                        group_id=group_id,
                        split=split,
                        image=image,
                        text=text,
                        audio=audio,
                        code=code,
                        video=video,
                        hierarchy=list(hierarchy),
                    )
                )
    progress.close()
    if dropped:
        log.info("hf: %d rows left out: their split maps to '' in data.hf.split_names", dropped)
    if writer.missing:
        log.warning("hf: %d media items had neither bytes nor a local file; validation will quarantine their rows",
                    writer.missing)
    if tracks := audio_from_video(rows, staging):
        log.info("hf: %d rows take their audio from their clip's audio track", tracks)
    log.info("hf: %d rows from %s", len(rows), name)
    return rows
