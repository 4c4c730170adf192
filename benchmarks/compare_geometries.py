"""Point, mixture and cone geometries on the same data and budget: one `dvc exp run` each, then a table of their
evaluate metrics (Markdown, for BENCHMARKS.md).

Each experiment runs in the workspace under its own `train.run_name` (`cmp-<geometry>`), so the data stages are shared
and only train, evaluate and register run per geometry, and its metrics are read from
`data/eval/cmp-<geometry>/metrics.json` as soon as it ends; the registry's min_metric is raised out of reach so that
the comparison registers nothing. The experiments stay available as `dvc exp show` rows; at the end params.yaml and
dvc.lock get their bytes back and `dvc checkout` puts the cached outputs back. (Before the metrics moved into git
under metrics/, `--temp` runs kept their outputs in the DVC cache only, where `dvc exp show` did not find them.)

Usage: python benchmarks/compare_geometries.py [--set key=value ...] [--name-prefix cmp]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

GEOMETRIES: dict[str, list[str]] = {
    "point": ["model.geometry=point"],
    "mixture": ["model.geometry=mixture"],
    "cone": ["model.geometry=cone"],
}
COLUMNS = [
    "image_to_text/R@1", "text_to_image/R@1", "audio_to_text/R@1", "text_to_audio/R@1", "code_to_text/R@1",
    "text_to_code/R@1", "mean_R@1", "mean_uncertainty_spearman", "hierarchy/containment_AUC", "hierarchy/level1/R@1",
    "composition/R@1", "composition/caption_R@1",
]  # fmt: skip


# dvc, and the multigeometry and torchrun commands its stages run, live beside this interpreter (the project's venv)
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def run_experiment(geometry: str, name: str, overrides: list[str]) -> dict[str, float]:
    run_name = f"cmp-{geometry}"
    cmd = ["dvc", "exp", "run", "--name", name, "-S", "registry.min_metric=2.0", "-S", f"train.run_name={run_name}"]
    for o in overrides:
        cmd += ["-S", o]
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, env=ENV)
    return json.loads((Path("data/eval") / run_name / "metrics.json").read_text())


def restore_workspace(saved: dict[Path, bytes]) -> None:
    for path, data in saved.items():
        path.write_bytes(data)
    subprocess.run(["dvc", "checkout", "--quiet"], check=False, env=ENV)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", "-S", dest="overrides", action="append", default=[], help="extra params, all runs")
    parser.add_argument("--name-prefix", default="cmp")
    args = parser.parse_args()
    metrics: dict[str, dict[str, float]] = {}
    saved = {p: p.read_bytes() for p in (Path("params.yaml"), Path("dvc.lock"))}  # as they were, edits included
    try:
        for geometry, extra in GEOMETRIES.items():
            # a workspace experiment leaves its -S edits in params.yaml: each starts from the original again
            Path("params.yaml").write_bytes(saved[Path("params.yaml")])
            metrics[geometry] = run_experiment(geometry, f"{args.name_prefix}-{geometry}", extra + args.overrides)
    finally:
        restore_workspace(saved)
    print("| geometry | " + " | ".join(COLUMNS) + " |")
    print("|---|" + "---:|" * len(COLUMNS))
    for geometry, row in metrics.items():
        cells = [f"{row[c]:.3f}" if isinstance(row.get(c), (int, float)) else "–" for c in COLUMNS]
        print(f"| {geometry} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
