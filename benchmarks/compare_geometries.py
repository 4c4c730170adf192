"""Point, mixture and cone geometries on the same data and budget: one `dvc exp run` each, then a table of their
evaluate metrics (Markdown, for BENCHMARKS.md).

Each experiment runs in a temporary copy (`--temp`, the workspace stays as it is) and shares the data stages through
the DVC cache, so only train, evaluate and register run per geometry; the
registry's min_metric is raised out of reach so that the comparison registers nothing.

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
    "point": ["model.geometry=point", "model.n_components=1", "loss.similarity=point"],
    "mixture": ["model.geometry=mixture"],
    "cone": ["model.geometry=cone"],
}
COLUMNS = [
    "image_to_text/R@1", "text_to_image/R@1", "audio_to_text/R@1", "text_to_audio/R@1", "code_to_text/R@1",
    "text_to_code/R@1", "mean_R@1", "mean_uncertainty_spearman", "hierarchy/containment_AUC", "hierarchy/level1/R@1",
]  # fmt: skip


# dvc, and the multigeometry and torchrun commands its stages run, live beside this interpreter (the project's venv)
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def run_experiment(name: str, overrides: list[str]) -> None:
    cmd = ["dvc", "exp", "run", "--temp", "--name", name, "-S", "registry.min_metric=2.0"]
    for o in overrides:
        cmd += ["-S", o]
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, env=ENV)


def experiment_metrics() -> dict[str, dict[str, float]]:
    out = subprocess.run(["dvc", "exp", "show", "--json"], check=True, capture_output=True, text=True, env=ENV).stdout
    found: dict[str, dict[str, float]] = {}
    for commit in json.loads(out):
        for exp in commit.get("experiments") or []:
            for revision in exp.get("revs", []):
                name = revision.get("name")
                metrics = (revision.get("data") or {}).get("metrics") or {}
                for path, values in metrics.items():
                    if path.endswith("metrics.json") and "/eval/" in path:
                        found[name] = values.get("data", {})
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", "-S", dest="overrides", action="append", default=[], help="extra params, all runs")
    parser.add_argument("--name-prefix", default="cmp")
    args = parser.parse_args()
    names = {g: f"{args.name_prefix}-{g}" for g in GEOMETRIES}
    for geometry, extra in GEOMETRIES.items():
        run_experiment(names[geometry], extra + args.overrides)
    metrics = experiment_metrics()
    print("| geometry | " + " | ".join(COLUMNS) + " |")
    print("|---|" + "---:|" * len(COLUMNS))
    for geometry, name in names.items():
        row = metrics.get(name, {})
        cells = [f"{row[c]:.3f}" if isinstance(row.get(c), (int, float)) else "–" for c in COLUMNS]
        print(f"| {geometry} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
