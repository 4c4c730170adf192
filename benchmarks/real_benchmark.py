"""The project's models against the linear probe on real paired data nobody here generated: each real set of
`benchmarks.realsets` (and the standard library's code–docstring pairs) through prepare, validate and shard once, then
train + evaluate for every model configuration and seed; one table of test metrics, mean ± std over the seeds.

    python benchmarks/real_benchmark.py [--sets ...] [--models ...] [--seeds 0 1 2] [--root data/bench]
        [--realsets data/realsets] [--set key=value ...] [--config NAME=key=value,key=value ...]
        [--json results.json] [--markdown table.md]

Every run starts from the project's params.yaml, then the set's overrides (its source, modalities and pairs), then
the model's, then `--set`. The data stages run with `seed: 0` (the splits of sources without fixed ones); only
training varies with the seed. Torch uses one thread per process (two oversubscribe a 2-core machine badly).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

AUDIO_TEXT = ["validate.modalities=[audio, text]", "pairs.pairs=[{a: audio, b: text}]"]
SETS: dict[str, list[str]] = {
    "tuxpaint-images": ["validate.modalities=[image, text]", "pairs.pairs=[{a: image, b: text}]"],
    "tuxpaint-sounds": AUDIO_TEXT,
    "spoken-words": [*AUDIO_TEXT, "eval.cascade=whisper-tiny.en-asr"],
    "spoken-phrases": [*AUDIO_TEXT, "eval.cascade=whisper-tiny.en-asr"],
    "stdlib-code": ["data.source=stdlib-code", "validate.modalities=[code, text]", "pairs.pairs=[{a: code, b: text}]",
                    "data.stdlib_code.max_samples=1500"],
    "world-hard": [],  # presets/overlays/world-hard.yaml over params.yaml
}
GENERATED = {"stdlib-code": None, "world-hard": REPO / "presets" / "overlays" / "world-hard.yaml"}
REAL_DATA = ["validate.max_bad_fraction=0.1", "validate.data_docs=false", "eval.grid_queries=0",
             "registry.min_metric=2.0"]
# the linear probe of the issue: one linear map per modality from the frozen features to 256-d, symmetric InfoNCE
# with a learnable temperature, AdamW, full batch, early stopping on the validation split
# (every modality's own trunk and feature normalisation reset to model.trunk's and model.feature_norm's)
ALL_MODALITIES = ("image", "text", "audio", "code", "video")
EACH_OWN = [f"model.{m}.{key}=''" for m in ALL_MODALITIES for key in ("trunk", "feature_norm")]
PROBE = [*EACH_OWN, "model.feature_norm=none",
         "model.geometry=point", "model.trunk=linear", "model.embed_dim=256", "model.text.lock=false",
         "model.code.init=random", "loader.batch_size=0",
         "train.epochs=400", "train.lr=0.001", "train.warmup_steps=0", "train.val_every=5", "train.patience=8",
         "model.composer.enabled=false"]
# the small-data recipe: the text side keeps its pretrained space (locked), code (the same text model) starts from it
ANCHORED = ["model.trunk=linear", "model.embed_dim=384", "model.text.lock=true", "model.code.init=identity",
            "loader.batch_size=0", "train.epochs=400", "train.lr=0.001", "train.warmup_steps=0", "train.val_every=5",
            "train.patience=8"]
# the recipe params.yaml had before the real-data work (a 2-layer MLP trunk per modality, batches of 64, 20 epochs)
OLD = [*EACH_OWN, "model.feature_norm=none",
       "model.trunk=mlp", "model.embed_dim=128", "model.text.lock=false", "model.code.init=random",
       "loader.batch_size=64", "train.epochs=20", "train.lr=0.002", "train.warmup_steps=20", "train.val_every=25",
       "train.patience=0"]
MODELS: dict[str, list[str]] = {
    "probe": PROBE,
    "point": ["model.geometry=point"],
    "mixture": ["model.geometry=mixture"],
    "cone": ["model.geometry=cone"],
    **{f"{g}-old": [f"model.geometry={g}", *OLD] for g in ("point", "mixture", "cone")},
    **{f"{g}-anchored": [f"model.geometry={g}", *ANCHORED] for g in ("point", "mixture", "cone")},
    # kernel ridge onto the locked text space as the start (model.trunk: kernel), on standardised features
    **{f"kernel-{g}": [f"model.geometry={g}", *EACH_OWN, "model.trunk=kernel", "model.feature_norm=standardize"]
       for g in ("point", "mixture", "cone")},
    # every modality linear on raw features (params.yaml's recipe, pinned against its per-modality keys)
    **{f"{g}-linear": [f"model.geometry={g}", *EACH_OWN, "model.trunk=linear", "model.feature_norm=none"]
       for g in ("point", "mixture", "cone")},
}
# each suspect of the gap to the probe, one change from the old point recipe (BENCHMARKS.md, "Real data")
SUSPECTS: dict[str, list[str]] = {
    "old": [],
    "last-weights": ["train.select=last"],
    "linear-trunk": ["model.trunk=linear"],
    "dropout-0.3": [f"model.{m}.dropout=0.3" for m in ("image", "text", "audio", "code")],
    "standardized": ["model.feature_norm=standardize"],
    "l2-features": ["model.feature_norm=l2"],
    "full-batch": ["loader.batch_size=0", "train.epochs=200", "train.val_every=5"],
    "scale-init-50": ["loss.init_logit_scale=50.0"],
    "lr-5e-4-x3-epochs": ["train.lr=0.0005", "train.epochs=60"],
    "text-locked": ["model.trunk=linear", "model.embed_dim=384", "model.text.lock=true"],
    "feature-noise": ["model.trunk=linear", *[f"model.{m}.feature_noise=0.3" for m in ("image", "audio", "code")]],
}
MODELS |= {f"suspect:{name}": ["model.geometry=point", *OLD, *extra] for name, extra in SUSPECTS.items()}
# the uncertainty and hierarchy options (issue 12), each on params.yaml's recipe; "<option>@<geometry>" in --models
OPTIONS: dict[str, list[str]] = {
    "base": [],
    "pcmepp": ["loss.objective=sigmoid"],
    "pcmepp-pseudo": ["loss.objective=sigmoid", "loss.pseudo_positive_weight=0.1"],
    "pcmepp-pseudo-warm": ["loss.objective=sigmoid", "loss.pseudo_positive_weight=0.1",
                           "loss.pseudo_positive_warmup_steps=50"],
    "pcmepp-mixup": ["loss.objective=sigmoid", "loss.mixup=0.5"],
    "vib-0": ["loss.kl_weight=0.0"],
    "vib-1e-3": ["loss.kl_weight=0.001"],
    "inclusion": ["loss.inclusion_weight=0.1"],
    "margins-aperture": ["loss.entailment_margins=[0.0, 0.05, 0.1]", "loss.aperture_weight=0.5"],
    "levels": ["loss.hierarchy_contrastive_weight=0.5"],
    "temperature": ["loss.uncertainty_temperature=1.0"],
    "variance-order": ["loss.variance_order_weight=1.0", "loss.variance_order_gap=0.2"],  # params.yaml's since 12-02
    "no-variance-order": ["loss.variance_order_weight=0"],  # the mixtures' recipe before the variance order
    "isotropic": ["model.variance=isotropic"],
    "isotropic-temperature": ["model.variance=isotropic", "loss.uncertainty_temperature=1.0"],
}
GEOMETRY_OPTIONS = {"point": ("base", "pcmepp", "levels"),
                    "mixture": ("base", "pcmepp", "pcmepp-pseudo", "pcmepp-pseudo-warm", "pcmepp-mixup", "vib-0",
                                "vib-1e-3", "inclusion", "levels", "temperature", "isotropic",
                                "isotropic-temperature", "variance-order", "no-variance-order"),
                    "cone": ("base", "pcmepp", "margins-aperture", "levels")}
MODELS |= {f"{option}@{g}": [f"model.geometry={g}", *OPTIONS[option]]
           for g, options in GEOMETRY_OPTIONS.items() for option in options}
DATA_SECTIONS = ("data", "validate", "audio", "features", "shard")
COLUMNS = ("mean_R@1", "mean_uncertainty_spearman", "hierarchy/containment_AUC", "hierarchy/level0/R@1",
           "hierarchy/level1/R@1", "cascade/mean_R@1")
UNCERTAINTY_COLUMNS = ("mean_R@1", "mean_uncertainty_ambiguity_spearman", "mean_corrupted_auroc",
                       "certain_to_uncertain_decile_R@1", "hierarchy/generality_spearman", "hierarchy/containment_AUC",
                       "hierarchy/level0/R@1", "hierarchy/level1/R@1", "hierarchy/level2/R@1")


def set_params(name: str, realsets: Path, extra: list[str], seed: int = 0):  # noqa: ANN201
    import yaml

    from multigeometry.config import params_from_dict

    base = yaml.safe_load((REPO / "params.yaml").read_text())
    if GENERATED.get(name) is not None:
        base = merged(base, yaml.safe_load(GENERATED[name].read_text()))
    source = [] if name in GENERATED else [f"data.source=folder:{(realsets / name).resolve()}"]
    overrides = [*source, *REAL_DATA, *SETS[name], *extra, f"seed={seed}"]
    params = params_from_dict(base, overrides)
    # one dataset folder per distinct data configuration, so variants of the features do not overwrite each other
    digest = params.section_hash(*(s for s in DATA_SECTIONS if s != "data"), "data.source", "data.stdlib_code")[:8]
    return params_from_dict(base, [*overrides, f"data.dataset={name}-{digest}"])


def merged(base: dict, overlay: dict) -> dict:
    out = dict(base)
    for key, value in overlay.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def prepare_set(name: str, realsets: Path, root: Path, extra: list[str]) -> None:
    from multigeometry.paths import shards_dir
    from multigeometry.stages.prepare import prepare
    from multigeometry.stages.shard import shard
    from multigeometry.stages.validate import validate

    params = set_params(name, realsets, extra)
    if (shards_dir(params, root) / "index.json").is_file():
        return
    for stage in (prepare, validate, shard):
        stage(params, root)


def run(name: str, model: str, seed: int, realsets: Path, root: Path, extra: list[str],
        cascade: bool) -> dict[str, float]:
    from multigeometry.paths import eval_dir
    from multigeometry.stages.evaluate import evaluate
    from multigeometry.stages.train import train

    params = set_params(name, realsets, [*MODELS[model], *extra, f"train.run_name={name}-{model}-s{seed}",
                                         f"train.tracking_uri=sqlite:///{(root / 'mlflow.db').resolve()}",
                                         *([] if cascade else ["eval.cascade="])], seed)
    train(params, root)
    evaluate(params, root)
    return json.loads((eval_dir(params, root) / "metrics.json").read_text())


def aggregate(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.pstdev(values):.3f}"


def decile_ratio(metrics: dict[str, float]) -> dict[str, float]:
    """The mean over directions of R@1 of the most certain decile over that of the least certain (issue 12's 1.5)."""
    ratios = [metrics[k] / metrics[k.replace("most_certain", "least_certain")]
              for k in metrics if k.endswith("/R@1_most_certain_decile")
              and metrics.get(k.replace("most_certain", "least_certain"), 0) > 0]
    return {"certain_to_uncertain_decile_R@1": sum(ratios) / len(ratios)} if ratios else {}


def table(results: dict[str, dict[str, list[dict[str, float]]]], columns: tuple[str, ...] = COLUMNS) -> str:
    lines = ["| set | model | " + " | ".join(columns) + " |", "|---|---|" + "---:|" * len(columns)]
    for name, models in results.items():
        for model, runs in models.items():
            runs = [r | decile_ratio(r) for r in runs]
            cells = [aggregate([r[c] for r in runs if c in r]) for c in columns]
            lines.append(f"| {name} | {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--models", nargs="+", default=["probe", "point", "mixture", "cone"],
                        help="configurations (probe, point, mixture, cone: params.yaml's recipe; <g>-old, "
                             "<g>-anchored; suspect:<name>, 'suspects' for all of these; <option>@<geometry>, "
                             "'options' for all of these)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--root", type=Path, default=Path("data/bench"))
    parser.add_argument("--realsets", type=Path, default=Path("data/realsets"))
    parser.add_argument("--set", "-S", dest="overrides", action="append", default=[], help="params for every run")
    parser.add_argument("--config", action="append", default=[], metavar="NAME=key=value,key=value",
                        help="another model configuration (base: params.yaml), usable in --models")
    parser.add_argument("--uncertainty", action="store_true", help="the uncertainty and hierarchy columns (issue 12)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(1)
    for spec in args.config:
        name, _, rest = spec.partition("=")
        MODELS[name] = [kv for kv in rest.split(",") if kv]
    if args.models == ["suspects"]:
        args.models = ["probe", *(m for m in MODELS if m.startswith("suspect:"))]
    if args.models == ["options"]:
        args.models = [m for m in MODELS if "@" in m]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        parser.error(f"unknown models {unknown}; known: {', '.join(MODELS)} (define more with --config)")
    missing = [s for s in args.sets if s not in GENERATED and not (args.realsets / s / "pairs.jsonl").is_file()]
    if missing:
        from benchmarks.realsets.build import build

        build(missing, args.realsets, Path.home() / ".cache" / "multigeometry" / "debian")
    started = time.time()
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    for name in args.sets:
        for model in args.models:
            # once per distinct data configuration: a model's params may change the features (`features.*`)
            prepare_set(name, args.realsets, args.root, [*MODELS[model], *args.overrides])
            for seed in args.seeds:
                t0 = time.time()
                first = model == args.models[0] and seed == args.seeds[0]  # the cascade does not depend on the model
                metrics = run(name, model, seed, args.realsets, args.root, args.overrides, cascade=first)
                results.setdefault(name, {}).setdefault(model, []).append(metrics)
                print(f"{name} {model} seed {seed}: mean R@1 {metrics.get('mean_R@1', float('nan')):.3f} "
                      f"({time.time() - t0:.0f} s)", flush=True)
    text = table(results, UNCERTAINTY_COLUMNS if args.uncertainty else COLUMNS)
    print(text)
    machine = f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    print(f"\n{time.time() - started:.0f} s on {machine}, torch threads 1; overrides: {args.overrides}")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "overrides": args.overrides, "models": {
            m: MODELS[m] for m in args.models}, "seconds": time.time() - started}, indent=1))
    if args.markdown:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
