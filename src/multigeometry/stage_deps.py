"""Each stage's code dependencies, computed: the files of the import closure of `multigeometry.stages.<stage>`
(`import_graph.py`: module-level and lazy imports alike), written into the `deps` of its stage in dvc.yaml by
`multigeometry deps --write` and checked by `multigeometry deps --check` and tests/test_stage_deps.py. The Prefect
flow's cache keys read the same lists from dvc.yaml (`pipelines/stage_cache.py`), so neither DVC nor Prefect skips a
re-run that a code change needs.

A package folder whose every module is in the closure is listed as the folder; otherwise its modules are listed one by
one. The `deps` entries outside the package folder (the data a stage reads) are written by hand and kept as they are.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from multigeometry.import_graph import PACKAGE, PACKAGE_DIR, closure, module_file, package_modules

log = logging.getLogger(__name__)

STAGES_PACKAGE = f"{PACKAGE}.stages"
# modules a stage runs that no import statement reaches: MLflow loads the registered model's code by its path
# (registry/pyfunc.py, `python_model=`)
EXTRA_ROOTS: dict[str, tuple[str, ...]] = {"register": (f"{PACKAGE}.registry.model_code",)}
MARKER = "# code: the import closure of {module} (`multigeometry deps --write`)"

_STAGE_LINE = re.compile(r"^  ([A-Za-z0-9_-]+):\s*(#.*)?$")
_DEPS_LINE = re.compile(r"^    deps:\s*(#.*)?$")
_ENTRY = re.compile(r"^\s*-\s+([^\s#]+)")


class StageDepsError(ValueError):
    """dvc.yaml cannot be read or written as the stage deps need."""


def stage_names(package_dir: Path = PACKAGE_DIR) -> list[str]:
    """The stages: the modules of `multigeometry.stages`, sorted by name."""
    prefix = f"{STAGES_PACKAGE}."
    return [m[len(prefix):] for m in package_modules(package_dir) if m.startswith(prefix) and "." not in
            m[len(prefix):]]


def stage_modules(stage: str, package_dir: Path = PACKAGE_DIR) -> set[str]:
    """Every package module that running stage `stage` may import."""
    return closure([f"{STAGES_PACKAGE}.{stage}", *EXTRA_ROOTS.get(stage, ())], package_dir)


def _files(modules: set[str], package_dir: Path) -> set[Path]:
    return {path for m in modules if (path := module_file(m, package_dir)) is not None}


def _all_modules_of(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*.py") if "__pycache__" not in p.parts}


def code_deps(stage: str, project: Path, package_dir: Path = PACKAGE_DIR) -> list[str]:
    """The code deps of `stage` as dvc.yaml lists them: paths relative to `project` (the folder of dvc.yaml), whole
    folders where every module below is imported, sorted."""
    package_dir, project = package_dir.resolve(), Path(project).resolve()
    if not package_dir.is_relative_to(project):
        raise StageDepsError(f"the package {package_dir} is not inside the project {project}; install it editable "
                             f"(pip install -e .) to compute its deps")
    files = _files(stage_modules(stage, package_dir), package_dir)
    folders = sorted({parent for p in files for parent in p.parents if parent.is_relative_to(package_dir)},
                     key=lambda p: (len(p.parts), p))
    whole: list[Path] = []
    for folder in folders:
        if folder != package_dir and not any(folder.is_relative_to(w) for w in whole) and \
                _all_modules_of(folder) <= files:
            whole.append(folder)
    # an empty module (a bare `__init__.py`) runs nothing, and DVC warns about every empty dep it hashes
    entries = whole + [f for f in files if not any(f.is_relative_to(w) for w in whole) and f.stat().st_size > 0]
    return sorted(p.relative_to(project).as_posix() for p in entries)


def code_prefix(project: Path, package_dir: Path = PACKAGE_DIR) -> str:
    """`src/multigeometry`: where code deps live, relative to `project`."""
    return package_dir.resolve().relative_to(Path(project).resolve()).as_posix()


def _is_code(entry: str, prefix: str) -> bool:
    return entry == prefix or entry.startswith(prefix + "/")


def _dep_path(dep: object) -> str:
    """The path of a `deps` entry, written as `- path` or `- path: {options}`."""
    return next(iter(dep)) if isinstance(dep, dict) else str(dep)


def declared_deps(dvc_yaml: Path) -> dict[str, list[str]]:
    """Each stage's `deps` in dvc.yaml, as written (templates unfilled)."""
    try:
        stages = yaml.safe_load(Path(dvc_yaml).read_text(encoding="utf-8"))["stages"]
        return {name: [_dep_path(d) for d in (stage.get("deps") or [])] for name, stage in stages.items()}
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError) as e:
        raise StageDepsError(f"{dvc_yaml}: cannot read its stages ({type(e).__name__}: {e})") from e


@dataclass(frozen=True)
class StageReport:
    """How a stage's declared code deps compare with its import closure."""

    stage: str
    declared: list[str]
    computed: list[str]
    uncovered: list[str]  # modules of the closure that no declared dep covers

    @property
    def current(self) -> bool:
        return self.declared == self.computed


def check(dvc_yaml: Path, package_dir: Path = PACKAGE_DIR) -> list[StageReport]:
    """One report per stage of `multigeometry.stages`; a stage missing from dvc.yaml, or a dvc.yaml stage that is not
    one of them, is an error."""
    project = Path(dvc_yaml).resolve().parent
    prefix = code_prefix(project, package_dir)
    declared = declared_deps(dvc_yaml)
    stages = stage_names(package_dir)
    if set(declared) != set(stages):
        raise StageDepsError(f"{dvc_yaml}: its stages {sorted(declared)} are not those of {STAGES_PACKAGE} "
                             f"{sorted(stages)}")
    reports = []
    for stage in stages:
        code = [d for d in declared[stage] if _is_code(d, prefix)]
        files = _files(stage_modules(stage, package_dir), package_dir)
        rel = sorted(f.resolve().relative_to(project).as_posix() for f in files if f.stat().st_size > 0)
        uncovered = [f for f in rel if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in code)]
        reports.append(StageReport(stage, sorted(code), code_deps(stage, project, package_dir), uncovered))
    return reports


def describe(reports: list[StageReport]) -> str:
    """What is out of date, one line per stage; empty when every stage's deps are current."""
    lines = []
    for r in reports:
        if r.current:
            continue
        missing = sorted(set(r.computed) - set(r.declared))
        extra = sorted(set(r.declared) - set(r.computed))
        lines.append(f"stage {r.stage}: missing {missing or 'nothing'}, not imported {extra or 'nothing'}"
                     + (f"; modules not covered: {r.uncovered}" if r.uncovered else ""))
    return "\n".join(lines)


def rewrite(text: str, deps: dict[str, list[str]], prefix: str, where: str = "dvc.yaml") -> str:
    """`text` (dvc.yaml) with the code entries of each stage's `deps:` replaced by `deps[stage]`, under a marker
    comment, after the stage's other entries; everything else, comments included, is kept."""
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    stage, done, i = None, set(), 0
    while i < len(lines):
        line = lines[i]
        if match := _STAGE_LINE.match(line):
            stage = match.group(1)
        out.append(line)
        i += 1
        if stage not in deps or not _DEPS_LINE.match(line):
            continue
        block = []
        while i < len(lines) and (not lines[i].strip() or lines[i].startswith("      ")):
            block.append(lines[i])
            i += 1
        tail = []
        while block and not block[-1].strip():
            tail.insert(0, block.pop())
        kept = [b for b in block if not b.strip().startswith("# code:")
                and not ((m := _ENTRY.match(b)) and _is_code(m.group(1), prefix))]
        module = f"{STAGES_PACKAGE}.{stage}"
        out += kept + [f"      {MARKER.format(module=module)}\n"] + [f"      - {d}\n" for d in deps[stage]] + tail
        done.add(stage)
    if missing := sorted(set(deps) - done):
        raise StageDepsError(f"{where}: no `deps:` list (at 4 spaces, under `stages:`) for stage(s) {missing}")
    return "".join(out)


def write(dvc_yaml: Path, package_dir: Path = PACKAGE_DIR) -> bool:
    """Rewrite the code deps of every stage in `dvc_yaml` from the import graph; True when the file changed."""
    from multigeometry.io import atomic_path

    dvc_yaml = Path(dvc_yaml)
    project = dvc_yaml.resolve().parent
    check(dvc_yaml, package_dir)  # the same stages on both sides
    prefix = code_prefix(project, package_dir)
    wanted = {stage: code_deps(stage, project, package_dir) for stage in stage_names(package_dir)}
    before = dvc_yaml.read_text(encoding="utf-8")
    after = rewrite(before, wanted, prefix, str(dvc_yaml))
    data = {name: [d for d in stage.get("deps") or [] if not _is_code(_dep_path(d), prefix)]
            for name, stage in yaml.safe_load(before)["stages"].items()}
    parsed = yaml.safe_load(after)["stages"]
    for name, kept in data.items():  # the rewrite kept every other entry and wrote exactly the computed ones
        if parsed[name].get("deps") != kept + wanted[name]:
            raise StageDepsError(f"{dvc_yaml}: stage {name}: rewriting its deps gave {parsed[name].get('deps')}; "
                                 f"expected {kept + wanted[name]} (is its `deps:` list laid out as the others?)")
    if after == before:
        return False
    with atomic_path(dvc_yaml) as tmp:
        tmp.write_text(after, encoding="utf-8")
    log.info("wrote the code deps of %d stages into %s", len(wanted), dvc_yaml)
    return True
