"""Tux Paint's stamps (Debian `tuxpaint-stamps-default`): artwork drawn for children, each with an English
description (the first line of `<stem>.txt`) and its place in a folder tree (`animals/birds/robin`), which gives a
3-level hierarchy: category ⊃ sub-category ⊃ the stamp. Some stamps carry a sound effect (`<stem>.ogg` / `.wav`)
and a spoken English description (`<stem>_desc.ogg`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from benchmarks.realsets.folder_set import SetBuilder

STAMPS = Path("usr/share/tuxpaint/stamps")
HIERARCHY_LEVELS = 2  # folder levels kept above the stamp


@dataclass(frozen=True)
class Stamp:
    stem: Path  # the stamp's path under the stamps folder, without a suffix
    folder: Path  # the stamps folder
    description: str

    @property
    def sample_id(self) -> str:
        return "-".join(self.stem.parts)

    @property
    def hierarchy(self) -> list[str]:
        return [part.replace("_", " ") for part in self.stem.parent.parts[:HIERARCHY_LEVELS]]

    def file(self, suffix: str) -> Path | None:
        path = self.folder / self.stem.with_name(self.stem.name + suffix)
        return path if path.is_file() else None


def stamps(folder: Path, builder: SetBuilder) -> Iterator[Stamp]:
    """Every stamp with an English description, in path order; the others are counted as skipped."""
    for txt in sorted(folder.rglob("*.txt")):
        try:
            lines = txt.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            builder.skip("description not UTF-8")
            continue
        first = next((line.strip() for line in lines if line.strip()), "")
        if not first or "=" in first.split(" ", 1)[0]:  # a file of translations only (`fr.utf8=...`)
            builder.skip("no English description")
            continue
        yield Stamp(txt.relative_to(folder).with_suffix(""), folder, first)


def build_images(root: Path, builder: SetBuilder) -> SetBuilder:
    """Image ↔ description with the folder hierarchy; SVG-only stamps are skipped (no rasteriser is assumed)."""
    folder = root / STAMPS
    for stamp in stamps(folder, builder):
        png = stamp.file(".png")
        if png is None:
            builder.skip("svg only" if stamp.file(".svg") else "no image")
            continue
        relative = ("image" / stamp.stem.with_suffix(".png")).as_posix()
        builder.add(f"tp-{stamp.sample_id}", stamp.description, hierarchy=stamp.hierarchy, image=(relative, png))
    return builder


def build_sounds(root: Path, builder: SetBuilder) -> SetBuilder:
    """Sound effect ↔ description with the folder hierarchy."""
    folder = root / STAMPS
    for stamp in stamps(folder, builder):
        sound = stamp.file(".ogg") or stamp.file(".wav")
        if sound is None:
            builder.skip("no sound effect")
            continue
        relative = ("audio" / stamp.stem.with_suffix(sound.suffix)).as_posix()
        builder.add(f"tps-{stamp.sample_id}", stamp.description, hierarchy=stamp.hierarchy, audio=(relative, sound))
    return builder


SPOKEN_ENGLISH = ("_desc.ogg", "_en_GB.ogg", "_en_US.ogg")  # the stamp's name, or its letter or number, said in English


def spoken_descriptions(root: Path, builder: SetBuilder) -> SetBuilder:
    """A person saying the stamp's name (or its letter or number) in English ↔ its English description."""
    folder = root / STAMPS
    for stamp in stamps(folder, builder):
        for suffix in SPOKEN_ENGLISH:
            clip = stamp.file(suffix)
            if clip is None:
                continue
            relative = ("audio/tuxpaint" / stamp.stem.with_name(stamp.stem.name + suffix)).as_posix()
            builder.add(f"tpd-{stamp.sample_id}{suffix.removesuffix('.ogg')}", stamp.description,
                        audio=(relative, clip))
    return builder
