"""Search a split with a trained model: an index of every sample's distributions, built once and persisted, then the
top k items of a query by the model's similarity, with their scores and uncertainties.

An index folder holds `search_index.json` (what it was built from: the model's sha256, the split and its shard
contents; sample ids, texts, and the calibration of each query -> item modality pair) and `embeddings.pt` (each
modality's distribution tensors). It is written whole into a staging folder and renamed into place (`io.atomic_dir`),
and it is rebuilt only when the model or the data changed, or when it is damaged (a cut or missing file, a JSON that
is not an index, rows that do not match): with a warning.

Every result carries `match_prob`, the calibrated probability that it matches the query (`calibration.py`: Platt
scaling of the similarity on the split's own pairs), and `no_match`, true for all results of a modality when even
the best one is more likely not a match; and the query's uncertainty with its percentile among the index's items of
the query's modality (`query_uncertainty_pct`: 99 means more uncertain than 99 % of them).

A modality with at least `registry.ann_threshold` items is searched approximately (`ann.py`: a FAISS IVF index over
its point directions, lifted cone axes or mixture component means, candidates re-ranked exactly by the model's
similarity, so every score is exact and only the candidate set is approximate); the FAISS index is built on the
first query of that modality and kept with the loaded index (`SearchIndex.approximate`), not written to disk.
Evaluation always ranks exactly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from multigeometry.config import RegistryConfig
from multigeometry.geometry.distribution import Distribution, from_tensors, to_tensors
from multigeometry.inference import TrainedModel

log = logging.getLogger(__name__)

INDEX_JSON = "search_index.json"
TENSORS = "embeddings.pt"
INDEX_FORMAT = 2


class SearchIndexError(ValueError):
    """A search index folder whose files are missing, cut or inconsistent."""


def index_key(model_sha256: str, shards_root: Path, split: str) -> dict[str, str]:
    """What an index depends on: the model, the split, and the split's shard contents (their sha256s). The split's
    shards must be present with the sizes the shard index records."""
    from multigeometry.data.shard_index import read_index, verify_split

    shards = read_index(shards_root)
    verify_split(shards_root, split, "size")
    entry = shards["splits"][split]
    data = hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()[:16]
    return {"format": str(INDEX_FORMAT), "model_sha256": model_sha256, "split": split, "data_hash": data}


@dataclass
class SearchIndex:
    key: dict[str, str]
    sample_ids: list[str]
    texts: dict[str, list[str]]  # the split's raw text and code by row ("" where absent)
    rows: dict[str, torch.Tensor]  # modality -> the split rows that carry it
    dists: dict[str, Distribution]  # modality -> their distributions, in `rows` order
    calibration: dict[str, list[float]]  # "<query modality>-><item modality>" -> Platt (a, b)
    # (modality, nlist, train_per_list) -> its approximate index (ann.ApproximateIndex), built on first use
    approximate: dict[tuple[str, int, int], Any] = field(default_factory=dict, repr=False)

    @property
    def modalities(self) -> list[str]:
        return list(self.dists)

    def approximate_index(self, trained: TrainedModel, modality: str, cfg: RegistryConfig | None) -> Any:
        """The approximate index of `modality` when `cfg` asks for one at its size (None: search it exactly)."""
        from multigeometry.ann import ApproximateIndex

        items = self.dists[modality]
        if cfg is None or cfg.ann_threshold == 0 or items.batch_size < cfg.ann_threshold:
            return None
        key = (modality, cfg.ann_nlist, cfg.ann_train_per_list)
        if key not in self.approximate:
            log.info("%s: %d items >= registry.ann_threshold %d, building its approximate index", modality,
                     items.batch_size, cfg.ann_threshold)
            similarity = trained.model.similarity
            self.approximate[key] = ApproximateIndex.build(items, similarity.kind, similarity.csd_tau, cfg.ann_nlist,
                                                           cfg.ann_train_per_list)
        return self.approximate[key]


def build_index(trained: TrainedModel, shards_root: Path, split: str, out: Path, key: dict[str, str],
                batch_size: int = 256) -> SearchIndex:
    from multigeometry.evaluation.embed import embed_split
    from multigeometry.io import atomic_dir

    emb = embed_split(trained, shards_root, split, batch_size, verify="size")
    index = SearchIndex(key, emb.sample_ids, emb.texts, emb.rows, emb.dists, calibrate(trained, emb))
    with atomic_dir(out) as staging:
        torch.save({m: {"rows": index.rows[m], **to_tensors(index.dists[m])} for m in index.dists},
                   staging / TENSORS)
        meta = {"key": key, "sample_ids": index.sample_ids, "texts": index.texts, "calibration": index.calibration}
        (staging / INDEX_JSON).write_text(json.dumps(meta, sort_keys=True))
    log.info("search index of %s (%d samples) written to %s", split, len(index.sample_ids), out)
    return index


def calibrate(trained: TrainedModel, emb: Any) -> dict[str, list[float]]:
    """Platt (a, b) for every ordered pair of the split's modalities, from its own matching and other pairs."""
    from multigeometry.calibration import fit_platt, pair_scores

    out: dict[str, list[float]] = {}
    for q in emb.dists:
        for m in emb.dists:
            if q == m:
                continue
            positives, negatives = pair_scores(emb.dists[q], emb.groups(q), emb.dists[m], emb.groups(m),
                                               trained.similarity)
            if positives.numel() and negatives.numel():
                out[f"{q}->{m}"] = list(fit_platt(positives, negatives))
    return out


def _read_meta(folder: Path) -> dict[str, Any]:
    path = folder / INDEX_JSON
    try:
        meta = json.loads(path.read_bytes())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SearchIndexError(f"{path}: unreadable ({type(e).__name__}: {e})") from e
    ok = (isinstance(meta, dict) and isinstance(meta.get("key"), dict) and isinstance(meta.get("sample_ids"), list)
          and isinstance(meta.get("texts"), dict))
    if not ok:
        raise SearchIndexError(f"{path}: not a search index (expected an object with key, sample_ids and texts)")
    n = len(meta["sample_ids"])
    if any(not isinstance(t, list) or len(t) != n for t in meta["texts"].values()):
        raise SearchIndexError(f"{path}: its texts do not match its {n} sample ids")
    return meta


def read_index_dir(folder: Path) -> SearchIndex:
    """The index in `folder`, checked whole: a `SearchIndexError` says what is damaged."""
    folder = Path(folder)
    meta = _read_meta(folder)
    try:
        tensors = torch.load(folder / TENSORS, map_location="cpu", weights_only=True)
        rows = {m: t["rows"] for m, t in tensors.items()}
        dists = {m: from_tensors(t) for m, t in tensors.items()}
    except (OSError, RuntimeError, EOFError, ValueError, KeyError, TypeError, AttributeError, pickle.UnpicklingError,
            zipfile.BadZipFile) as e:
        raise SearchIndexError(f"{folder / TENSORS}: unreadable ({type(e).__name__}: {str(e)[:200]})") from e
    n = len(meta["sample_ids"])
    for m, r in rows.items():
        if r.ndim != 1 or r.numel() != dists[m].batch_size or (r.numel() and not 0 <= int(r.min()) <= int(r.max()) < n):
            raise SearchIndexError(f"{folder}: the {m} rows do not match its {n} sample ids")
    return SearchIndex(key=meta["key"], sample_ids=meta["sample_ids"], texts=meta["texts"], rows=rows, dists=dists,
                       calibration=meta.get("calibration", {}))


def load_or_build(trained: TrainedModel, model_sha256: str, shards_root: Path, split: str, folder: Path,
                  batch_size: int = 256) -> tuple[SearchIndex, bool]:
    """The index in `folder` when it was built from this model and data, else a new one: (index, built now). A
    damaged index is rebuilt, with a warning."""
    folder = Path(folder)
    key = index_key(model_sha256, shards_root, split)
    if (folder / INDEX_JSON).exists() or (folder / TENSORS).exists():
        try:
            found = _read_meta(folder)["key"]
            if found == key:
                return read_index_dir(folder), False
            log.info("%s was built from another model or data (%s); rebuilding it", folder, found)
        except SearchIndexError as e:
            log.warning("%s: damaged search index (%s); rebuilding it", folder, e)
    elif folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder}: exists and is not a search index; choose an empty or new folder")
    return build_index(trained, shards_root, split, folder, key, batch_size), True


def search(trained: TrainedModel, index: SearchIndex, query: Distribution, k: int, targets: list[str] | None = None,
           block_size: int = 1024, query_modality: str = "text",
           registry: RegistryConfig | None = None) -> list[dict[str, Any]]:
    """The top `k` items of each target modality (default: every modality of the index) for ONE query of
    `query_modality`: rows of rank, modality, sample_id, score (the model's similarity), match_prob and
    no_match (calibrated), uncertainty (the item's) and the sample's text, with the query's uncertainty and its
    percentile among the index's items of its modality. `registry`'s ann_* settings choose approximate search for
    large modalities (None: always exact)."""
    from multigeometry.ann import approximate_topk
    from multigeometry.calibration import match_probability
    from multigeometry.evaluation.retrieval import blockwise_topk
    from multigeometry.geometry.distribution import uncertainty as query_uncertainty

    if query.batch_size != 1:
        raise ValueError(f"search: one query at a time, got {query.batch_size}")
    targets = targets or index.modalities
    unknown = [t for t in targets if t not in index.dists]
    if unknown:
        raise ValueError(f"search: the index has no {unknown}; it holds {', '.join(index.modalities)}")
    device = next(trained.model.parameters()).device
    measure = trained.params.eval.mixture_uncertainty
    results: list[dict[str, Any]] = []
    with torch.no_grad():
        mine = query_uncertainty(query, measure)
        own = query_uncertainty(index.dists[query_modality], measure) if query_modality in index.dists else None
        q_unc = float(mine[0]) if mine is not None else float("nan")
        q_pct = (100.0 * float((own.cpu() < q_unc).double().mean()) if own is not None and mine is not None
                 else float("nan"))
        for m in targets:
            items = index.dists[m].to(device)
            on_device = query.to(device)
            ann = index.approximate_index(trained, m, registry)
            if ann is None:
                scores, top = blockwise_topk(on_device, items, trained.similarity, k, block_size)
            else:  # padded with -1 where fewer than k candidates were found
                scores, top = approximate_topk(on_device, items, trained.similarity, ann, k,
                                               registry.ann_candidates, registry.ann_nprobe)  # type: ignore[union-attr]
                found = top[0] >= 0
                scores, top = scores[:, found], top[:, found]
            uncertainty = query_uncertainty(items, measure)
            a_b = index.calibration.get(f"{query_modality}->{m}")
            probs = [match_probability(float(sc), *a_b) if a_b else float("nan") for sc in scores[0].tolist()]
            no_match = bool(a_b) and max(probs, default=0.0) < 0.5
            for rank, (score, i) in enumerate(zip(scores[0].tolist(), top[0].tolist(), strict=True), start=1):
                row = int(index.rows[m][i])
                results.append({
                    "modality": m,
                    "rank": rank,
                    "sample_id": index.sample_ids[row],
                    "score": float(score),
                    "match_prob": probs[rank - 1],
                    "no_match": no_match,
                    "query_uncertainty": q_unc,
                    "query_uncertainty_pct": q_pct,
                    "uncertainty": float(uncertainty[i]) if uncertainty is not None else float("nan"),
                    "text": index.texts["text"][row] if "text" in index.texts
                    else "",
                })
    return results
