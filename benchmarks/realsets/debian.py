"""Pinned Debian packages: downloaded with `apt-get download NAME=VERSION`, checked against their sha256, extracted
with `dpkg-deb -x` into a cache folder (temporary folder, then rename), so a set is rebuilt from the same bytes."""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DebPackage:
    name: str
    version: str
    sha256: str

    @property
    def filename(self) -> str:
        return f"{self.name}_{self.version.replace(':', '%3a')}_all.deb"


class PackageError(RuntimeError):
    """A package that cannot be fetched, or whose bytes are not the pinned ones."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(package: DebPackage, cache: Path) -> Path:
    """The package's .deb in `cache`, downloaded once and verified every time."""
    cache.mkdir(parents=True, exist_ok=True)
    deb = cache / package.filename
    if not deb.is_file():
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            cmd = ["apt-get", "download", f"{package.name}={package.version}"]
            done = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
            found = list(Path(tmp).glob(f"{package.name}_*.deb"))
            if done.returncode != 0 or len(found) != 1:
                raise PackageError(
                    f"{' '.join(cmd)} failed (exit {done.returncode}): {done.stderr.strip()[-500:]}; the pinned "
                    f"version may have left the mirror (run `apt-get update`, or `apt-cache policy {package.name}`)"
                )
            found[0].replace(deb)
    actual = sha256_file(deb)
    if actual != package.sha256:
        raise PackageError(f"{deb}: sha256 {actual}, expected the pinned {package.sha256}; remove it to fetch again")
    return deb


def extract(deb: Path, target: Path) -> Path:
    """`deb`'s files under `target` (made once: a temporary folder renamed into place)."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(staging)], check=True, capture_output=True)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def fetch(package: DebPackage, cache: Path) -> Path:
    """The root of `package`'s extracted files (its `usr/` is below it)."""
    deb = download(package, cache / "debs")
    return extract(deb, cache / "extracted" / f"{package.name}_{package.version.replace(':', '_')}")
