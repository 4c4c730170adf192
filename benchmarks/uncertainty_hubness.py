"""What a trained model's uncertainty follows on a split with injected ambiguity (issue 12): per item modality, the
Spearman correlation of each item's uncertainty with its injected severity and with its hubness as a candidate (the
softmax mass that the captions, as queries, put on it under the model's similarity times its logit scale), and of
hubness with severity. Under InfoNCE a mixture's CSD variance of a candidate lowers its logit against every query
alike, so its gradient is the item's column mass less one: variance that tracks hubness, not ambiguity.

Usage: python benchmarks/uncertainty_hubness.py --model data/models/<run>/model.pt --shards data/shards/<dataset>
       [--split test] [--modalities image audio]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--shards", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--modalities", nargs="+", default=["image", "audio"])
    args = parser.parse_args(argv)

    from multigeometry.evaluation.embed import embed_split
    from multigeometry.evaluation.uncertainty import spearman
    from multigeometry.geometry.distribution import select_rows, uncertainty
    from multigeometry.inference import load_trained

    trained = load_trained(args.model)
    emb = embed_split(trained, args.shards, args.split)
    report: dict[str, dict[str, float]] = {}
    captions = emb.rows["text"].tolist()
    for modality in args.modalities:
        if modality not in emb.rows:
            continue
        items = emb.rows[modality].tolist()
        both = sorted(set(items) & set(captions))
        item_dists = select_rows(emb.dists[modality], torch.tensor([items.index(r) for r in both]))
        caption_dists = select_rows(emb.dists["text"], torch.tensor([captions.index(r) for r in both]))
        with torch.no_grad():
            logits = trained.logit_scale * trained.similarity(caption_dists, item_dists)
            hubness = torch.softmax(logits, dim=1).sum(0)
        u = uncertainty(item_dists)
        if u is None:
            continue
        severity = torch.tensor([emb.ambiguity[r].get(modality, {}).get("severity", 0.0) for r in both])
        report[modality] = {"items": len(both), "uncertainty~severity": round(spearman(u, severity), 3),
                            "uncertainty~hubness": round(spearman(u, hubness), 3),
                            "hubness~severity": round(spearman(hubness, severity), 3)}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
