"""Build the real benchmark sets as `folder:` datasets.

    python -m benchmarks.realsets.build --out data/realsets [--cache DIR] [SET ...]

Sets: `tuxpaint-images` (image ↔ description, 3-level hierarchy), `tuxpaint-sounds` (sound effect ↔ description,
same hierarchy), `spoken-words` (speech ↔ what is said), `spoken-phrases` (acted game lines ↔ what they express).
Each is fetched from pinned Debian packages (version and sha256 below) and written to `<out>/<set>/`; the same
packages give the same bytes.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.realsets import speech, tuxpaint
from benchmarks.realsets.debian import DebPackage, fetch
from benchmarks.realsets.folder_set import SetBuilder

TUXPAINT = DebPackage(
    "tuxpaint-stamps-default", "2022.06.04-1", "6db6c1bfc870a47f1499d6203b083522eacb57c5f9c87d468f2e92eb6d9d5f34"
)
HEDGEWARS = DebPackage(
    "hedgewars-data", "1.0.2-6", "722225903a72604403e6e0026e40e9a6953f47a74d94efc5f55504bc05bb4761"
)
KTUBERLING = DebPackage(
    "ktuberling-data", "4:22.12.3-1", "fba44c875bfa31ea488dadd9263e87a4dcaea0bd47d28817f6c0dc6d2af970ed"
)


@dataclass(frozen=True)
class RealSet:
    name: str
    packages: tuple[DebPackage, ...]
    build: Callable[[dict[str, Path], SetBuilder], object]  # roots by package name, builder


def _spoken_words(roots: dict[str, Path], builder: SetBuilder) -> None:
    speech.build_ktuberling(roots[KTUBERLING.name], builder)
    tuxpaint.spoken_descriptions(roots[TUXPAINT.name], builder)


SETS = {
    s.name: s
    for s in (
        RealSet("tuxpaint-images", (TUXPAINT,), lambda r, b: tuxpaint.build_images(r[TUXPAINT.name], b)),
        RealSet("tuxpaint-sounds", (TUXPAINT,), lambda r, b: tuxpaint.build_sounds(r[TUXPAINT.name], b)),
        RealSet("spoken-words", (KTUBERLING, TUXPAINT), _spoken_words),
        RealSet("spoken-phrases", (HEDGEWARS,), lambda r, b: speech.build_hedgewars(r[HEDGEWARS.name], b)),
    )
}


def build_set(real: RealSet, roots: dict[str, Path], out: Path) -> Path:
    """`real` from already extracted package roots (by package name) into `out`."""
    sources = [{"debian": p.name, "version": p.version, "sha256": p.sha256} for p in real.packages]
    builder = SetBuilder(real.name, sources)
    real.build(roots, builder)
    return builder.write(out)


def build(names: list[str], out: Path, cache: Path) -> list[Path]:
    unknown = sorted(set(names) - set(SETS))
    if unknown:
        raise SystemExit(f"unknown set(s) {unknown}; known: {', '.join(SETS)}")
    written = []
    for name in names:
        real = SETS[name]
        roots = {p.name: fetch(p, cache) for p in real.packages}
        written.append(build_set(real, roots, out / name))
        logging.getLogger(__name__).info("built %s", out / name)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sets", nargs="*", default=list(SETS), help=f"default: all ({', '.join(SETS)})")
    parser.add_argument("--out", type=Path, default=Path("data/realsets"))
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "multigeometry" / "debian")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for path in build(args.sets, args.out, args.cache):
        print(path, (path / "SOURCE.json").read_text())


if __name__ == "__main__":
    main()
