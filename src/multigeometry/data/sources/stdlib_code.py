"""Code–docstring pairs from the Python standard library of the running interpreter (`data.source: stdlib-code`).

A real dataset that needs no network: every public function, method and class of the standard library that has a
docstring becomes one row. Its text is the docstring's first paragraph; its code is the definition's source without
that docstring (so the caption is not written inside the code), at most `max_code_lines` lines; its hierarchy is the
chain of packages, module and enclosing classes, most general first: `json.decoder.JSONDecoder.decode` has
`["json", "json.decoder", "json.decoder.JSONDecoder"]`. Private names (leading underscore) are left out, and a
docstring that several definitions share is kept by the first only.

The walk is deterministic: files in sorted order, definitions in source order, and when there are more candidates
than `max_samples`, an evenly spread subset of them, so that every part of the library is represented.
"""

from __future__ import annotations

import ast
import logging
import os
import re
import sysconfig
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from multigeometry.config import StdlibCodeConfig
from multigeometry.data.manifest import ManifestRow
from multigeometry.data.sources.media import media_stem, write_media

log = logging.getLogger(__name__)

# folders of the standard library that hold tests, tools or third-party code rather than library code
SKIP_DIRS = frozenset(
    {
        "test",
        "tests",
        "idle_test",
        "idlelib",
        "site-packages",
        "dist-packages",
        "__pycache__",
        "turtledemo",
        "__phello__",
        "lib-dynload",
        "ensurepip",
    }
)
_MAX_CUT_TRIES = 25
_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


def first_paragraph(docstring: str) -> str:
    """The first paragraph of a docstring, on one line with single spaces."""
    return " ".join(_PARAGRAPH_BREAK.split(docstring.strip(), maxsplit=1)[0].split())


def _dedent_by_first_line(code: str) -> str:
    """Remove the first line's indentation from every line (at most that much, and only whitespace).

    Unlike `textwrap.dedent`, a method whose multi-line string starts at column 0 still comes out parseable.
    """
    lines = code.splitlines()
    first = next((line for line in lines if line.strip()), "")
    width = len(first) - len(first.lstrip())
    if not width:
        return code
    out = []
    for line in lines:
        head = line[:width]
        out.append(line[len(head) - len(head.lstrip()) :])
    return "\n".join(out) + "\n"


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return True


def truncate_code(code: str, max_lines: int) -> str | None:
    """`code` cut to at most `max_lines` lines at a statement boundary, still valid Python, or None if impossible.

    A cut is marked with a `# ... (truncated)` comment line, which counts towards `max_lines`.
    """
    lines = code.splitlines()
    if len(lines) <= max_lines:
        return code
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return None
    ends = sorted(
        {n.end_lineno for n in ast.walk(tree) if isinstance(n, ast.stmt) and n.end_lineno and n.end_lineno < max_lines},
        reverse=True,
    )
    for cut in ends[:_MAX_CUT_TRIES]:
        head = "\n".join(lines[:cut])
        if not _parses(head):
            continue
        following = lines[cut]
        indent = following[: len(following) - len(following.lstrip())]
        return f"{head}\n{indent}# ... (truncated)\n"
    return None


def code_without_docstring(code: str, max_lines: int | None = None) -> str | None:
    """The source of one definition (its first top-level `def`/`class`) without that definition's docstring.

    The code is dedented first (a method's source may start indented). A body that held nothing but the docstring
    becomes `pass`. With `max_lines`, the result is cut at a statement boundary (`truncate_code`). Returns None when
    the code is not valid Python or the docstring cannot be removed cleanly (it shares a line with other code).
    Code without a definition or without a docstring comes back dedented and otherwise unchanged.
    """
    code = _dedent_by_first_line(code)
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return None
    node = next((n for n in tree.body if isinstance(n, _DEFS)), None)
    lines = code.splitlines()
    if node is not None and ast.get_docstring(node, clean=False) is not None:
        doc = node.body[0]
        first, last = doc.lineno, doc.end_lineno or doc.lineno
        before = lines[first - 1][: doc.col_offset]
        after = lines[last - 1][doc.end_col_offset or 0 :].strip()
        if before.strip() or (after and not after.startswith("#")):
            return None  # `def f(): "doc"` or `"doc"; x = 1`: no clean line cut
        drop_to = last
        while drop_to < len(lines) and not lines[drop_to].strip():
            drop_to += 1  # the blank lines after the docstring go with it
        kept = lines[: first - 1]
        if len(node.body) == 1:
            kept.append(f"{before}pass")
        lines = kept + lines[drop_to:]
        code = "\n".join(lines) + "\n"
        if not _parses(code):
            return None
    else:
        code = "\n".join(lines) + "\n"
    if max_lines is not None:
        return truncate_code(code, max_lines)
    return code


@dataclass(frozen=True)
class _Candidate:
    path: Path
    module: str
    qualname: str
    classes: tuple[str, ...]
    start: int
    end: int
    text: str

    @property
    def sample_id(self) -> str:
        return f"{self.module}.{self.qualname}"


def _module_name(root: Path, path: Path) -> str | None:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    if not parts or not all(p.isidentifier() for p in parts):
        return None
    return ".".join(parts)


def _skipped_dir(name: str) -> bool:
    return name in SKIP_DIRS or name.startswith(("config-", "."))


def stdlib_files(root: Path, packages: tuple[str, ...] = ()) -> list[tuple[Path, str]]:
    """The library's `.py` files under `root` with their module names, sorted, tests and tools left out.

    With `packages`, only those top-level modules and packages are walked.
    """
    if packages:
        tops = [root / f"{p}.py" for p in packages] + [root / p for p in packages]
    else:
        tops = sorted(root.iterdir())
    paths: list[Path] = []
    for top in tops:
        if top.is_file() and top.suffix == ".py":
            paths.append(top)
        elif top.is_dir() and not _skipped_dir(top.name):
            for folder, dirs, files in os.walk(top):
                dirs[:] = [d for d in dirs if not _skipped_dir(d)]  # prune before descending
                paths.extend(Path(folder) / f for f in files if f.endswith(".py"))
    found: list[tuple[Path, str]] = []
    for path in sorted(paths):
        if path.name.startswith("test_") or path.name == "conftest.py":
            continue
        module = _module_name(root, path)
        if module is not None:
            found.append((path, module))
    return found


def _definitions(body: list[ast.stmt], prefix: str, classes: tuple[str, ...]) -> Iterator[tuple[ast.AST, str, tuple]]:
    """Public defs and classes of a module or class body, in source order; also those under module-level if/try."""
    for node in body:
        if isinstance(node, _DEFS):
            if node.name.startswith("_"):
                continue
            qualname = prefix + node.name
            yield node, qualname, classes
            if isinstance(node, ast.ClassDef):
                yield from _definitions(node.body, f"{qualname}.", (*classes, qualname))
        elif isinstance(node, (ast.If, ast.Try, ast.TryStar)):
            branches = [node.body, node.orelse]
            if isinstance(node, (ast.Try, ast.TryStar)):
                branches += [h.body for h in node.handlers] + [node.finalbody]
            for branch in branches:
                yield from _definitions(branch, prefix, classes)


def _read_source(path: Path) -> str | None:
    try:
        with tokenize.open(path) as f:
            return f.read()
    except (OSError, SyntaxError, UnicodeDecodeError) as e:
        log.debug("stdlib-code: skipping %s (%s)", path, e)
        return None


def _candidates(path: Path, module: str, source: str, min_doc_chars: int) -> list[_Candidate]:
    try:
        tree = ast.parse(source, filename=str(path))
    except (SyntaxError, ValueError) as e:
        log.debug("stdlib-code: skipping %s (%s)", path, e)
        return []
    found = []
    for node, qualname, classes in _definitions(tree.body, "", ()):
        docstring = ast.get_docstring(node)
        if not docstring:
            continue
        text = first_paragraph(docstring)
        if len(text) < min_doc_chars or text.startswith(">>>"):
            continue
        start = min([d.lineno for d in node.decorator_list] + [node.lineno])
        found.append(_Candidate(path, module, qualname, classes, start, node.end_lineno or node.lineno, text))
    return found


def _hierarchy(candidate: _Candidate) -> list[str]:
    parts = candidate.module.split(".")
    levels = [".".join(parts[: i + 1]) for i in range(len(parts))]
    return levels + [f"{candidate.module}.{c}" for c in candidate.classes]


def _spread(n: int, k: int) -> list[range]:
    """k consecutive, nearly equal index ranges covering range(n) (k ≤ n)."""
    bounds = [i * n // k for i in range(k + 1)]
    return [range(bounds[i], bounds[i + 1]) for i in range(k)]


def stdlib_code_rows(staging: Path, cfg: StdlibCodeConfig, root: Path | None = None) -> list[ManifestRow]:
    """Rows of code–docstring pairs from the standard library at `root` (default: the running interpreter's)."""
    root = Path(root) if root is not None else Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise FileNotFoundError(f"stdlib-code: the standard library folder {root} does not exist")
    files = stdlib_files(root, tuple(cfg.packages))
    if cfg.packages:
        tops = {module.split(".")[0] for _, module in files}
        missing = [p for p in cfg.packages if p not in tops]
        if missing:
            raise ValueError(
                f"data.stdlib_code.packages: {missing} are not modules or packages of the standard library at {root} "
                "(give top-level names such as 'json', 'email', 'collections')"
            )

    sources: dict[Path, list[str]] = {}
    candidates: list[_Candidate] = []
    seen: set[str] = set()
    for path, module in tqdm(files, desc="stdlib-code: parse", unit="file", disable=None):
        source = _read_source(path)
        if source is None:
            continue
        found = [c for c in _candidates(path, module, source, cfg.min_doc_chars) if c.sample_id not in seen]
        if not found:
            continue
        # a name defined twice (platform branches) keeps its first definition
        unique = {c.sample_id: c for c in reversed(found)}
        found = [c for c in found if unique[c.sample_id] is c]
        seen.update(c.sample_id for c in found)
        candidates.extend(found)
        sources[path] = source.splitlines()

    # A text shared by several definitions ("Internal function.", an override's copied docstring) would make
    # captions that match several codes: only its first definition keeps it.
    texts: set[str] = set()
    distinct = []
    for candidate in candidates:
        if candidate.text not in texts:
            texts.add(candidate.text)
            distinct.append(candidate)
    repeated, candidates = len(candidates) - len(distinct), distinct

    # one row per slot: the first candidate of the slot whose code cuts cleanly
    slots = _spread(len(candidates), min(len(candidates), cfg.max_samples))
    rows: list[ManifestRow] = []
    skipped = 0
    for slot in tqdm(slots, desc="stdlib-code: write", unit="slot", disable=None):
        for index in slot:
            candidate = candidates[index]
            lines = sources[candidate.path][candidate.start - 1 : candidate.end]
            code = code_without_docstring("\n".join(lines) + "\n", cfg.max_code_lines)
            if code is None:
                skipped += 1
                continue
            relative = write_media(staging, "code", media_stem(candidate.sample_id), code.encode("utf-8"), "py")
            rows.append(
                ManifestRow(
                    sample_id=candidate.sample_id,
                    group_id=candidate.sample_id,
                    text=candidate.text,
                    code=relative,
                    hierarchy=_hierarchy(candidate),
                )
            )
            break
    log.info(
        "stdlib-code: %d rows from %d files under %s (%d definitions with docstrings; %d left out for a repeated "
        "docstring, %d for no clean code cut)",
        len(rows), len(files), root, len(candidates) + repeated, repeated, skipped,
    )
    return rows
