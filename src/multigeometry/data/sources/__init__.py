"""Data sources: each turns its input into manifest rows and media files inside a staging folder."""

from __future__ import annotations

from pathlib import Path

from multigeometry.config import Params
from multigeometry.data.manifest import ManifestRow


def load_rows(staging: Path, params: Params) -> list[ManifestRow]:
    """The rows of `params.data.source`, with their media written under `staging`."""
    kind, _, arg = params.data.source.partition(":")
    if kind == "world":
        from multigeometry.data.sources.world import world_rows

        return world_rows(staging, params.data.world, params.seed)
    if kind == "hf":
        from multigeometry.data.sources.hf import hf_rows

        return hf_rows(staging, arg, params.data.hf)
    if kind == "folder":
        from multigeometry.data.sources.folder import folder_rows

        return folder_rows(staging, Path(arg))
    if kind == "stdlib-code":
        from multigeometry.data.sources.stdlib_code import stdlib_code_rows

        return stdlib_code_rows(staging, params.data.stdlib_code)
    raise ValueError(f"data.source: unknown source {params.data.source!r}")
