"""What a source's content is, beyond the params that name it, so that a prepare re-runs when the files behind
`data.source` change: a `folder:` pairs file (its sha256) and the files beside it, a local `hf:` dataset, the running
interpreter of `stdlib-code`. The embedded world is decided by its params alone, and a Hub dataset by its name and
`@revision`.

Media files are fingerprinted by relative path, size and modification time (hashing every image of a large dataset
on each run would cost more than the prepare it saves); the pairs file by its bytes.
"""

from __future__ import annotations

import glob
import hashlib
import os
import sys
from pathlib import Path
from typing import Any

from multigeometry.config import Params
from multigeometry.io import sha256_file

_SKIPPED = {".git", "__pycache__", ".ipynb_checkpoints"}


def files_digest(paths: list[Path], base: Path) -> dict[str, Any]:
    """(relative path, size, mtime) of every file, as one sha256 and a count."""
    digest = hashlib.sha256()
    count = 0
    for path in sorted(paths):
        try:
            stat = path.stat()
        except OSError:
            continue
        rel = path.relative_to(base).as_posix() if path.is_relative_to(base) else str(path)
        digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        count += 1
    return {"files": count, "files_sha256": digest.hexdigest()}


def tree_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _SKIPPED]
        found.extend(Path(folder) / n for n in names)
    return found


def _folder(path: Path) -> dict[str, Any]:
    from multigeometry.data.sources.folder import PAIRS_FILES

    root = path.expanduser().resolve()
    if not root.is_dir():
        return {"folder": str(root), "missing": True}
    pairs = {name: sha256_file(root / name) for name in PAIRS_FILES if (root / name).is_file()}
    media = [p for p in tree_files(root) if p.parent != root or p.name not in PAIRS_FILES]
    return {"folder": str(root), "pairs_sha256": pairs, **files_digest(media, root)}


def _hf(name: str, params: Params) -> dict[str, Any]:
    local = Path(name).expanduser()
    out: dict[str, Any] = {"hf": name}
    if local.exists():
        out.update(files_digest(tree_files(local.resolve()), local.resolve()))
    base = local.resolve() if local.is_dir() else Path.cwd()
    patterns = [entry.partition("=")[2] if "=" in entry else entry for entry in params.data.hf.data_files]
    matched = [Path(p) for pattern in patterns if "://" not in pattern
               for p in glob.glob(str(base / pattern), recursive=True) if Path(p).is_file()]
    if matched:
        out["data_files"] = files_digest(matched, base)
    return out


def source_fingerprint(params: Params) -> dict[str, Any]:
    """The content behind `data.source` that its params do not capture (empty for the embedded world)."""
    kind, _, arg = params.data.source.partition(":")
    if kind == "folder":
        return _folder(Path(arg))
    if kind == "hf":
        return _hf(arg, params)
    if kind == "stdlib-code":  # that dataset is the running interpreter's library
        return {"python": ".".join(str(v) for v in sys.version_info[:3])}
    return {}
