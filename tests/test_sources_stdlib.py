"""The `stdlib-code` source: code–docstring pairs from the standard library, found with `ast`."""

from __future__ import annotations

import ast
import inspect
import json
import textwrap
from pathlib import Path

import pytest

from multigeometry.config import StdlibCodeConfig
from multigeometry.data.sources.stdlib_code import (
    code_without_docstring,
    first_paragraph,
    stdlib_code_rows,
    truncate_code,
)


@pytest.fixture
def staging(tmp_path: Path) -> Path:
    out = tmp_path / "staging"
    out.mkdir()
    return out


def test_real_stdlib_pairs_for_json(staging):
    rows = stdlib_code_rows(staging, StdlibCodeConfig(packages=("json",), max_samples=500, max_code_lines=40))
    by_id = {r.sample_id: r for r in rows}
    assert len(by_id) == len(rows) > 10
    assert all(r.group_id == r.sample_id and r.split is None for r in rows)
    assert all(r.sample_id.startswith("json") for r in rows)

    dumps = by_id["json.dumps"]
    assert dumps.text == first_paragraph(inspect.getdoc(json.dumps))
    assert dumps.hierarchy == ["json"]
    code = (staging / dumps.code).read_text()
    assert code.startswith("def dumps(")
    assert dumps.text[:30] not in " ".join(code.split())  # the docstring is not inside the code

    decode = by_id["json.decoder.JSONDecoder.decode"]
    assert decode.hierarchy == ["json", "json.decoder", "json.decoder.JSONDecoder"]
    assert (staging / decode.code).read_text().startswith("def decode(self, s")  # dedented method

    for row in rows:
        source = (staging / row.code).read_text()
        ast.parse(source)
        assert len(source.splitlines()) <= 40
        assert row.code == f"code/{row.sample_id}.py"
        assert len(row.text) >= 16 and "\n" not in row.text
        assert not any(part.startswith("_") for part in row.sample_id.split("."))


def test_deterministic_and_spread_over_packages(tmp_path):
    cfg = StdlibCodeConfig(packages=("json", "textwrap", "shlex"), max_samples=6)
    first = stdlib_code_rows(tmp_path / "a", cfg)
    second = stdlib_code_rows(tmp_path / "b", cfg)
    assert [r.sample_id for r in first] == [r.sample_id for r in second]
    assert len(first) == 6
    assert {r.sample_id.split(".")[0] for r in first} == {"json", "textwrap", "shlex"}
    for a, b in zip(first, second, strict=True):
        assert (tmp_path / "a" / a.code).read_bytes() == (tmp_path / "b" / b.code).read_bytes()


def test_unknown_package_is_an_error(staging):
    with pytest.raises(ValueError, match=r"data\.stdlib_code\.packages: \['no_such_module'\]"):
        stdlib_code_rows(staging, StdlibCodeConfig(packages=("json", "no_such_module")))


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


def test_fake_library_skips_tests_tools_and_private_names(tmp_path, staging):
    root = tmp_path / "lib"
    write(root / "shapes" / "__init__.py", '"""Shapes."""\n')
    write(
        root / "shapes" / "solid.py",
        '''
        import functools


        class Cube:
            """A cube of a given side length.

            More text that stays out of the caption.
            """

            def volume(self):
                """Return the volume of the cube."""
                return self.side ** 3

            def _secret(self):
                """A private helper that is left out."""

            @functools.cache
            def area(self):
                """Return the surface area of the cube."""

            def __repr__(self):
                """Return a printable representation."""
                return "Cube()"


        def make_cube(side):
            """Build a cube with the given side length."""
            def inner():
                """Nested functions are part of their parent's code, not samples."""
            return Cube()


        def tiny():
            """Too short."""


        if True:
            def platform_thing():
                """A function defined under a module-level branch."""
                return 1
        else:
            def platform_thing():
                """The other branch's platform function, left out."""
                return 2


        def copy_of_volume(self):
            """Return the volume of the cube."""
            return 0
        ''',
    )
    for skipped in ("test/test_shapes.py", "idlelib/editor.py", "site-packages/pkg/mod.py", "shapes/tests/t.py"):
        write(root / skipped, 'def visible():\n    """This docstring is long enough to count."""\n')

    rows = stdlib_code_rows(staging, StdlibCodeConfig(), root=root)
    by_id = {r.sample_id: r for r in rows}
    assert sorted(by_id) == [
        "shapes.solid.Cube",
        "shapes.solid.Cube.area",
        "shapes.solid.Cube.volume",
        "shapes.solid.make_cube",
        "shapes.solid.platform_thing",
    ]
    cube = by_id["shapes.solid.Cube"]
    assert cube.text == "A cube of a given side length."
    assert cube.hierarchy == ["shapes", "shapes.solid"]
    assert by_id["shapes.solid.Cube.volume"].hierarchy == ["shapes", "shapes.solid", "shapes.solid.Cube"]
    # a body that was only a docstring becomes `pass`; decorators stay with their function
    assert (staging / by_id["shapes.solid.Cube.area"].code).read_text() == (
        "@functools.cache\ndef area(self):\n    pass\n"
    )
    assert (staging / by_id["shapes.solid.Cube.volume"].code).read_text() == (
        "def volume(self):\n    return self.side ** 3\n"
    )
    assert "return 1" in (staging / by_id["shapes.solid.platform_thing"].code).read_text()
    make = (staging / by_id["shapes.solid.make_cube"].code).read_text()
    assert "Build a cube" not in make and "Nested functions" in make


def test_long_definitions_are_cut_at_a_statement_boundary(tmp_path, staging):
    root = tmp_path / "lib"
    body = "\n".join(f"        total += {i}" for i in range(30))
    write(
        root / "long.py",
        f'''
def long_function(n):
    """A function far longer than the line limit."""
    total = 0
    for _ in range(n):
{body}
    try:
        total += 1
    except ValueError:
        pass
    return total
''',
    )
    rows = stdlib_code_rows(staging, StdlibCodeConfig(max_code_lines=8), root=root)
    (row,) = rows
    code = (staging / row.code).read_text()
    lines = code.splitlines()
    assert len(lines) <= 8
    assert lines[0] == "def long_function(n):" and lines[-1].strip() == "# ... (truncated)"
    ast.parse(code)


def test_code_without_docstring_edge_cases():
    assert code_without_docstring('def f(): "doc on the header line"\n') is None
    assert code_without_docstring("def broken(:\n    pass\n") is None
    assert code_without_docstring("x = 1\n") == "x = 1\n"
    method = '    def m(self):\n        """Doc."""\n        s = """\nraw\n"""\n        return s\n'
    assert code_without_docstring(method) == 'def m(self):\n    s = """\nraw\n"""\n    return s\n'
    assert truncate_code("a = 1\nb = 2\n", 5) == "a = 1\nb = 2\n"
    assert truncate_code("def f():\n    return (\n        1\n    )\n", 2) is None


def test_first_paragraph():
    assert first_paragraph("  Summary line\n  continues here.\n\n  Details.") == "Summary line continues here."


def test_prepare_stage_reads_the_stdlib_source(tmp_path):
    from multigeometry.config import params_from_dict
    from multigeometry.data.manifest import MANIFEST, read_manifest
    from multigeometry.stages.prepare import prepare

    params = params_from_dict(
        {
            "data": {
                "dataset": "stdlib",
                "source": "stdlib-code",
                "stdlib_code": {"packages": ["json"], "max_samples": 8},
            }
        }
    )
    out = prepare(params, tmp_path)
    frame = read_manifest(out / MANIFEST)
    assert len(frame) == 8 and frame["sample_id"].is_unique
    assert frame["image"].isna().all() and frame["audio"].isna().all()
    assert all((out / path).is_file() for path in frame["code"])
    assert all(h[0] == "json" for h in frame["hierarchy"])
