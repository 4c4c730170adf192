"""params.yaml and the presets are rendered from the dataclasses of `config.py`, which hold every knob's default and its
one-line doc (the comment on the field's line, or the comment lines right above it; a class docstring's first line
heads its section). One place for both, so a params file cannot drift from the code's defaults:

    multigeometry params --write params.yaml                                       # the defaults
    multigeometry params --params presets/overlays/NAME.yaml --write presets/NAME.yaml   # a preset, in full

A preset's overlay holds only what differs from the defaults; the full file beside it is what DVC reads when the
preset is copied over params.yaml. A test renders each again and compares.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import io
import textwrap
import tokenize
import typing
from pathlib import Path
from typing import Any

import yaml

from multigeometry.config import Params

COMMENT_COLUMN = 26  # where a value's doc starts, as in a hand-written params file
WIDTH = 120


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """`cls`'s field name -> its doc: the comment on its line, else the comment lines just above it; a field a
    dataclass inherits has its base class's doc."""
    inherited: dict[str, str] = {}
    for base in reversed(cls.__mro__[1:]):
        if dataclasses.is_dataclass(base):
            inherited.update(field_docs(base))
    return inherited | _own_field_docs(cls)


def _own_field_docs(cls: type) -> dict[str, str]:
    names = {f.name for f in dataclasses.fields(cls)}
    source = inspect.getsource(cls)
    trailing = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    docs: dict[str, str] = {}
    above: list[str] = []
    for row, line in enumerate(source.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("#").strip())
            continue
        name = stripped.split(":", 1)[0]
        if line.startswith("    ") and not line.startswith("     ") and name in names and ":" in stripped:
            comment = trailing.get(row, "")
            if comment.startswith(("noqa", "type:")):
                comment = ""
            doc = comment or " ".join(above)
            if doc:
                docs[name] = doc
        above = []
    return docs


def section_doc(cls: type) -> str:
    """The first sentence of the class docstring (not the signature dataclasses write where there is none)."""
    doc = (cls.__doc__ or "").strip()
    if not doc or doc.startswith(f"{cls.__name__}("):
        return ""
    first = " ".join(doc.split("\n\n", 1)[0].split())
    return first.split(". ", 1)[0].rstrip(".")


def _scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, allow_unicode=True).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _flow(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    if dataclasses.is_dataclass(value):
        return _flow({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    return _scalar(value)


def with_choices(doc: str, tp: Any) -> str:
    """A doc that lists a Literal's choices, unless it names them already."""
    if typing.get_origin(tp) is typing.Literal:
        choices = [str(c) for c in typing.get_args(tp)]
        if not all(c in doc for c in choices):
            return " | ".join(choices) + (f": {doc}" if doc else "")
    return doc


def _with_doc(text: str, doc: str, indent: str) -> list[str]:
    if not doc:
        return [text]
    pad = max(COMMENT_COLUMN, len(text) + 1)
    line = f"{text.ljust(pad)} # {doc}" if len(text) < COMMENT_COLUMN else f"{text}  # {doc}"
    if len(line) <= WIDTH:
        return [line]
    return [*_comment_block(doc, indent), text]


def _comment_block(doc: str, indent: str) -> list[str]:
    words, out, line = doc.split(), [], ""
    for word in words:
        if line and len(indent) + 2 + len(line) + 1 + len(word) > WIDTH:
            out.append(f"{indent}# {line}")
            line = word
        else:
            line = f"{line} {word}".strip()
    if line:
        out.append(f"{indent}# {line}")
    return out


def _render(obj: Any, indent: str) -> list[str]:
    out: list[str] = []
    docs = field_docs(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        doc = with_choices(docs.get(f.name, ""), typing.get_type_hints(type(obj))[f.name])
        if dataclasses.is_dataclass(value):
            section = section_doc(type(value))
            out += _with_doc(f"{indent}{f.name}:", doc or section, indent)
            out += _render(value, indent + "  ")
        elif isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
            out += _with_doc(f"{indent}{f.name}:", doc, indent)
            out += [f"{indent}  - {_flow(v)}" for v in value]
        else:
            out += _with_doc(f"{indent}{f.name}: {_flow(value)}", doc, indent)
    return out


def render(params: Params, header: str = "") -> str:
    """The whole params file: every knob of `params` with its doc, sections separated by a blank line."""
    lines = [f"# {h}".rstrip() if h else "#" for h in header.strip("\n").splitlines()] if header else []
    docs = field_docs(Params)
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        if lines:
            lines.append("")
        if dataclasses.is_dataclass(value):
            lines += _with_doc(f"{f.name}:", docs.get(f.name, "") or section_doc(type(value)), "")
            lines += _render(value, "  ")
        else:
            lines += _with_doc(f"{f.name}: {_flow(value)}", docs.get(f.name, ""), "")
    return "\n".join(lines) + "\n"


def undocumented(cls: type = Params, prefix: str = "") -> list[str]:
    """Dotted keys of the knobs that have no doc yet."""
    missing = []
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            missing += undocumented(tp, key + ".")
        elif not docs.get(f.name):
            missing.append(key)
    return missing


def header_of(path: Path) -> str:
    """The leading comment block of a params file (the lines before the first key), without the '# '."""
    lines = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[2:] if line.startswith("# ") else line[1:])
    return "\n".join(lines)


DEFAULTS_HEADER = """Every knob of multigeometry with its default and what it does, rendered from
src/multigeometry/config.py, which holds both: change a default there and run
`multigeometry params --defaults --write params.yaml`.
Override with `multigeometry <stage> --set key=value` or `dvc exp run -S key=value`."""


def header_for(source: Path | None, target: Path | None) -> str:
    """The comment block a written params file starts with: the defaults' header, or a preset overlay's own header
    and where the full file comes from."""
    if source is None:
        return DEFAULTS_HEADER
    source = Path(source)
    if source.parent.name == "overlays":
        own = header_of(source)
        made = (f"The full params file of {source.as_posix()}: "
                f"`multigeometry params --params {source.as_posix()} --write {target.as_posix() if target else '...'}` "
                "writes it; edit the overlay, not this file.")
        made = "\n".join(textwrap.wrap(made, WIDTH - 2, break_on_hyphens=False, break_long_words=False))
        return f"{own}\n{made}" if own else made
    return header_of(source) or DEFAULTS_HEADER
