"""Approximate search of a large gallery: a FAISS inverted-file index (IVF, exact distances inside the lists it
probes) over the vectors of `geometry.search`, whose candidates are re-ranked exactly by the geometry's similarity.

An item contributes one row per component (a point's or cone's one vector, a mixture's K component vectors); a
query searches with each of its components, the rows found are mapped back to their items, and the union of those
items is scored with the model's own similarity, so every score returned is exact and only the candidate set is
approximate. `search` and the pyfunc's search use it for a modality with at least `registry.ann_threshold` items;
evaluation is always exact.

Cost: building is a k-means over `train_per_list` points per list (FAISS's default takes up to 256) and one
assignment of every row; a query scans `nprobe` lists of about rows/nlist rows each, against every row for an exact
search.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from multigeometry.geometry.distribution import Distribution, device_of
from multigeometry.geometry.search import search_vectors
from multigeometry.geometry.similarity import SimilarityFn, SimilarityKind

log = logging.getLogger(__name__)

# k-means needs this many training points per list (FAISS warns below it)
MIN_POINTS_PER_LIST = 39
ADD_CHUNK_ROWS = 1 << 17


def auto_nlist(rows: int) -> int:
    """FAISS's rule of thumb, about 4·sqrt(rows) lists, with at least MIN_POINTS_PER_LIST rows a list."""
    return max(1, min(int(round(4 * math.sqrt(rows))), rows // MIN_POINTS_PER_LIST))


def _faiss():  # noqa: ANN202 - the module
    import faiss

    faiss.omp_set_num_threads(torch.get_num_threads())  # FAISS's OpenMP pool the size of torch's
    return faiss


@dataclass
class ApproximateIndex:
    """A FAISS IVF index over `n_items` items of `components` rows each (row r belongs to item r // components)."""

    index: object  # faiss.IndexIVFFlat
    n_items: int
    components: int
    kind: SimilarityKind
    tau: float

    @property
    def nlist(self) -> int:
        return int(self.index.nlist)  # type: ignore[attr-defined]

    @classmethod
    def build(cls, items: Distribution, kind: SimilarityKind, tau: float = 1.0, nlist: int = 0,
              train_per_list: int = 64, seed: int = 0) -> ApproximateIndex:
        """Cluster a sample of the item rows into `nlist` lists (0: `auto_nlist`) and add every row."""
        from tqdm import tqdm

        faiss = _faiss()
        rows, _ = search_vectors(items, kind, "item", tau)
        x = np.ascontiguousarray(rows.detach().cpu().numpy(), dtype=np.float32)
        n_rows, dim = x.shape
        if n_rows == 0:
            raise ValueError("an approximate index needs at least one item")
        nlist = min(nlist or auto_nlist(n_rows), n_rows)
        started = time.perf_counter()
        quantizer = faiss.IndexFlatL2(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_L2)
        index.cp.seed = seed
        index.cp.max_points_per_centroid = max(train_per_list, MIN_POINTS_PER_LIST)
        sample = min(n_rows, nlist * index.cp.max_points_per_centroid)
        pick = np.random.default_rng(seed).choice(n_rows, sample, replace=False) if sample < n_rows else slice(None)
        index.train(x[pick])
        trained = time.perf_counter()
        with tqdm(total=n_rows, desc="approximate index", unit="row", disable=n_rows < 4 * ADD_CHUNK_ROWS) as bar:
            for r0 in range(0, n_rows, ADD_CHUNK_ROWS):
                index.add(x[r0:r0 + ADD_CHUNK_ROWS])
                bar.update(min(ADD_CHUNK_ROWS, n_rows - r0))
        log.info("approximate index: %d rows of %d dims in %d lists (k-means on %d rows %.1f s, adding %.1f s)",
                 n_rows, dim, nlist, sample, trained - started, time.perf_counter() - trained)
        return cls(index, items.batch_size, n_rows // items.batch_size, kind, tau)

    def candidates(self, queries: Distribution, n: int, nprobe: int) -> Tensor:
        """Up to `n` items for each query component, merged per query: (Q, M) item indices, each listed once,
        padded with −1."""
        rows, _ = search_vectors(queries, self.kind, "query", self.tau)
        self.index.nprobe = min(nprobe, self.nlist)  # type: ignore[attr-defined]
        _faiss()
        _, found = self.index.search(np.ascontiguousarray(rows.detach().cpu().numpy(), dtype=np.float32),  # type: ignore[attr-defined]
                                     min(n, self.index.ntotal))  # type: ignore[attr-defined]
        items = torch.from_numpy(found).div(self.components, rounding_mode="floor")  # −1 stays −1
        per_query = items.reshape(queries.batch_size, -1)
        ordered = per_query.sort(dim=1).values
        repeat = torch.zeros_like(ordered, dtype=torch.bool)
        repeat[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
        return ordered.masked_fill(repeat, -1)

    def to_bytes(self) -> bytes:
        return _faiss().serialize_index(self.index).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, n_items: int, components: int, kind: SimilarityKind,
                   tau: float) -> ApproximateIndex:
        index = _faiss().deserialize_index(np.frombuffer(data, dtype=np.uint8))
        if index.ntotal != n_items * components:
            raise ValueError(f"approximate index holds {index.ntotal} rows, expected {n_items} x {components}")
        return cls(index, n_items, components, kind, tau)


def approximate_topk(queries: Distribution, items: Distribution, similarity: SimilarityFn, index: ApproximateIndex,
                     k: int, candidates: int, nprobe: int, block_size: int = 16) -> tuple[Tensor, Tensor]:
    """The k best items of every query among its approximate candidates, scored exactly by `similarity`:
    (scores, indices), each (Q, k), best first; a query with fewer than k candidates is padded with −inf / −1.

    The `block_size` queries of a block are scored against the union of their candidates (one similarity call), so
    small blocks waste little: 16 ran 2.5x faster than 256 and 2x faster than one query a call (bench_retrieval.py).
    """
    if index.n_items != items.batch_size:
        raise ValueError(f"the approximate index was built over {index.n_items} items, got {items.batch_size}")
    values, indices = [], []
    for i0 in range(0, queries.batch_size, block_size):
        block = queries.map(lambda t, i0=i0: t[i0:i0 + block_size])
        cands = index.candidates(block, max(candidates, k), nprobe).to(device_of(items))
        known = cands >= 0
        union, where = torch.unique(cands[known], return_inverse=True)
        scores = torch.full(cands.shape, float("-inf"), device=cands.device)
        if union.numel():
            exact = similarity(block, items.map(lambda t, union=union: t[union]))  # (b, U)
            rows = torch.arange(cands.shape[0], device=cands.device)[:, None].expand_as(cands)[known]
            scores[known] = exact[rows, where].to(scores.dtype)
        width = min(k, cands.shape[1])
        top = scores.topk(width, dim=1)
        picked = cands.gather(1, top.indices).masked_fill(top.values == float("-inf"), -1)
        if width < k:  # fewer candidates than k at all
            pad = k - width
            top_values = torch.cat([top.values, top.values.new_full((len(picked), pad), float("-inf"))], 1)
            picked = torch.cat([picked, picked.new_full((len(picked), pad), -1)], 1)
        else:
            top_values = top.values
        values.append(top_values.cpu())
        indices.append(picked.cpu())
    if not values:
        return torch.zeros(0, k), torch.zeros(0, k, dtype=torch.long)
    return torch.cat(values), torch.cat(indices)
