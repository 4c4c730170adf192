"""A local folder of media files plus a pairs file naming each row's modalities (`data.source: folder:<path>`).

The folder holds `pairs.jsonl` (one JSON object a line) or `pairs.csv` (a header line, then one row a line), with
these columns, every one optional but at least one modality a row:

- `sample_id` (default: `row<line number>`), `group_id` (default: the sample id), `split` (`train`, `val` or
  `test`; left empty, the split is assigned per group);
- `image`, `audio`, `code`, `video`: paths relative to the folder; `text`: the caption itself. A row with a `video`
  whose clip has an audio track and no `audio` of its own takes the track as its audio;
- the hierarchy, most general first, either as `hierarchy` (a JSON list; in `pairs.csv` a JSON list in the cell) or
  as `level_0`, `level_1`, ... columns (a row may stop early: its levels end at the first empty one).

Media files are copied into the staging folder under the same relative paths. A media file that does not exist is
not an error here: the row keeps its path and validation quarantines it. Anything else wrong with the pairs file
(unknown columns, a path that leaves the folder, a bad split, a duplicate sample id) is an error that names the file,
the line and the column.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import posixpath
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from multigeometry.config import SPLITS
from multigeometry.data.manifest import MANIFEST, ManifestRow
from multigeometry.data.sources.media import audio_from_video
from multigeometry.paths import PREPARE_STAMP

log = logging.getLogger(__name__)

PAIRS_FILES = ("pairs.jsonl", "pairs.csv")
MEDIA_COLUMNS = ("image", "audio", "code", "video")
ID_COLUMNS = ("sample_id", "group_id", "split")
KNOWN_COLUMNS = (*ID_COLUMNS, *MEDIA_COLUMNS, "text", "hierarchy")
_LEVEL = re.compile(r"^level_(\d+)$")
# names the prepare stage writes at the top of the staging folder; a media file may not take them
_RESERVED = frozenset({MANIFEST, PREPARE_STAMP})


class PairsFileError(ValueError):
    """A pairs file that does not follow the format; the message names the file, the line and the column."""


def find_pairs_file(folder: Path) -> Path:
    """The folder's pairs file: `pairs.jsonl` or `pairs.csv`, exactly one of them."""
    if not folder.is_dir():
        raise FileNotFoundError(f"folder source: {folder} is not a folder")
    present = [folder / name for name in PAIRS_FILES if (folder / name).is_file()]
    if not present:
        raise FileNotFoundError(f"folder source: {folder} has no pairs file; expected one of {', '.join(PAIRS_FILES)}")
    if len(present) > 1:
        raise PairsFileError(f"folder source: {folder} has both {' and '.join(p.name for p in present)}; keep one")
    return present[0]


def _read_text(path: Path) -> str:
    """The pairs file as text: UTF-8 (a byte-order mark is dropped), or an error naming the line and the byte."""
    from multigeometry.data.readers import utf8_problem

    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line, problem = utf8_problem(data, e)
        raise PairsFileError(f"{path}, line {line}: {problem}") from e


def _check_text(path: Path, line_no: int, record: dict[str, Any]) -> None:
    """JSON's escapes can spell a lone surrogate (\\ud800), which is no text: no file or table can store it."""
    for key, value in record.items():
        for text in (key, *(value if isinstance(value, list) else [value])):
            if isinstance(text, str):
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError as e:
                    raise PairsFileError(
                        f"{path}, line {line_no}, column {str(key)!r}: {text[e.start]!r} is a lone surrogate, not "
                        "text; fix the JSON escape") from e


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for line_no, line in enumerate(io.StringIO(_read_text(path)), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise PairsFileError(f"{path}, line {line_no}: not valid JSON ({e})") from e
        if not isinstance(record, dict):
            raise PairsFileError(f"{path}, line {line_no}: expected a JSON object, got {type(record).__name__}")
        _check_text(path, line_no, record)
        yield line_no, record


def _read_csv(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with io.StringIO(_read_text(path), newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            raise PairsFileError(f"{path}: empty file; expected a header line naming the columns")
        duplicated = sorted({c for c in reader.fieldnames if reader.fieldnames.count(c) > 1})
        if duplicated:
            raise PairsFileError(f"{path}, line 1: columns {duplicated} appear more than once in the header")
        for record in reader:
            if None in record:
                raise PairsFileError(f"{path}, line {reader.line_num}: more cells than header columns")
            # an empty cell is a missing value
            yield reader.line_num, {k: (v if v != "" else None) for k, v in record.items()}


def _check_columns(path: Path, line_no: int, columns: list[str]) -> list[str]:
    """The row's level columns in order; an error for any column the format does not know."""
    unknown = [c for c in columns if c not in KNOWN_COLUMNS and not _LEVEL.match(c)]
    if unknown:
        raise PairsFileError(
            f"{path}, line {line_no}: unknown column(s) {unknown}; allowed: {', '.join(KNOWN_COLUMNS)}, "
            "level_0, level_1, ..."
        )
    levels = sorted((c for c in columns if _LEVEL.match(c)), key=lambda c: int(_LEVEL.match(c).group(1)))
    if levels and "hierarchy" in columns:
        raise PairsFileError(
            f"{path}, line {line_no}: give the hierarchy either as 'hierarchy' or as level_N columns, not both"
        )
    expected = [f"level_{i}" for i in range(len(levels))]
    if levels != expected:
        raise PairsFileError(
            f"{path}, line {line_no}: level columns {levels} must be {expected} (from level_0, without a gap)"
        )
    return levels


def _string(path: Path, line_no: int, column: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise PairsFileError(
            f"{path}, line {line_no}, column {column!r}: expected a string, got {type(value).__name__} {value!r}"
        )
    return value


def _hierarchy(path: Path, line_no: int, record: dict[str, Any], levels: list[str], is_csv: bool) -> list[str]:
    if levels:
        values = [_string(path, line_no, c, record.get(c)) for c in levels]
        depth = next((i for i, v in enumerate(values) if v is None or not v.strip()), len(values))
        if any(v is not None and v.strip() for v in values[depth:]):
            raise PairsFileError(
                f"{path}, line {line_no}, column {levels[depth]!r}: empty, but a deeper level has a value; "
                "a hierarchy runs from level_0 down without gaps"
            )
        return [v.strip() for v in values[:depth]]
    value = record.get("hierarchy")
    if value is None:
        return []
    if is_csv:
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise PairsFileError(
                f"{path}, line {line_no}, column 'hierarchy': expected a JSON list of strings, e.g. "
                f'["animal", "dog"], got {value!r} ({e})'
            ) from e
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise PairsFileError(
            f"{path}, line {line_no}, column 'hierarchy': expected a list of non-empty strings, most general first, "
            f"got {value!r}"
        )
    return [v.strip() for v in value]


def _media_path(folder: Path, pairs: Path, line_no: int, column: str, value: str) -> str:
    """The normalised relative path of a media cell; an error when it is absolute or leaves `folder` (resolved)."""
    if "\\" in value:
        value = value.replace("\\", "/")
    normalised = posixpath.normpath(value)
    if posixpath.isabs(normalised) or normalised == ".." or normalised.startswith("../") or normalised == ".":
        raise PairsFileError(
            f"{pairs}, line {line_no}, column {column!r}: path {value!r} must be relative and inside {folder}"
        )
    resolved = (folder / normalised).resolve()
    if not resolved.is_relative_to(folder):
        raise PairsFileError(
            f"{pairs}, line {line_no}, column {column!r}: path {value!r} leads outside {folder} (through a link)"
        )
    if normalised in _RESERVED or normalised in PAIRS_FILES:
        raise PairsFileError(
            f"{pairs}, line {line_no}, column {column!r}: {value!r} is not a media file (the name is reserved)"
        )
    return normalised


def folder_rows(staging: Path, folder: Path) -> list[ManifestRow]:
    """The rows of `folder`'s pairs file, with the media files it names copied into `staging`."""
    folder = Path(folder)
    pairs = find_pairs_file(folder)
    root = folder.resolve()
    is_csv = pairs.suffix == ".csv"
    records = list(_read_csv(pairs) if is_csv else _read_jsonl(pairs))
    if not records:
        raise PairsFileError(f"{pairs}: no rows")

    rows: list[ManifestRow] = []
    first_line: dict[str, int] = {}
    for line_no, record in records:
        levels = _check_columns(pairs, line_no, list(record))
        ids = {c: _string(pairs, line_no, c, record.get(c)) for c in ID_COLUMNS}
        sample_id = (ids["sample_id"] or "").strip() or f"row{line_no:06d}"
        if sample_id in first_line:
            raise PairsFileError(
                f"{pairs}, line {line_no}, column 'sample_id': {sample_id!r} is already used on line "
                f"{first_line[sample_id]}"
            )
        first_line[sample_id] = line_no
        split = (ids["split"] or "").strip() or None
        if split is not None and split not in SPLITS:
            raise PairsFileError(
                f"{pairs}, line {line_no}, column 'split': {split!r} is not one of {', '.join(SPLITS)} "
                "(leave it empty to have the split assigned per group)"
            )
        media = {}
        for column in MEDIA_COLUMNS:
            value = _string(pairs, line_no, column, record.get(column))
            media[column] = _media_path(root, pairs, line_no, column, value) if value else None
        text = _string(pairs, line_no, "text", record.get("text"))
        if text is None and not any(media.values()):
            raise PairsFileError(f"{pairs}, line {line_no}: the row has none of image, text, audio, code, video")
        rows.append(
            ManifestRow(
                sample_id=sample_id,
                group_id=(ids["group_id"] or "").strip() or sample_id,
                split=split,
                text=text,
                hierarchy=_hierarchy(pairs, line_no, record, levels, is_csv),
                **media,
            )
        )

    wanted = sorted({getattr(row, c) for row in rows for c in MEDIA_COLUMNS if getattr(row, c)})
    missing = 0
    for relative in tqdm(wanted, desc=f"folder: copy {folder.name}", unit="file", disable=None):
        source = folder / relative
        if not source.is_file():
            missing += 1
            log.debug("folder: %s names %s, which does not exist; validation will quarantine its rows", pairs, source)
            continue
        target = staging / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    if missing:
        log.warning("folder: %d of %d media files named in %s do not exist; their rows keep the paths and will be "
                    "quarantined by validation", missing, len(wanted), pairs)
    if tracks := audio_from_video(rows, staging):
        log.info("folder: %d rows take their audio from their clip's audio track", tracks)
    log.info("folder: %d rows, %d media files from %s", len(rows), len(wanted) - missing, pairs)
    return rows
