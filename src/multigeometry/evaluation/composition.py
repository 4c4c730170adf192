"""Composition metrics: does compose(parts) retrieve what the compound's own caption retrieves?

Each distinct compound of the split (by meaning: its atom set) is a query twice: as compose(parts) through the
model's compositional layer, and as its caption through the text encoder. An item is a positive of a compound when
the compound's atoms are a subset of the item's (a red circle is in every scene that has a red circle), as for the
hierarchy metrics. `composition/<m>/R@1` is the composed queries' R@1 over the items of modality m,
`composition/<m>/caption_R@1` the captions' beside it, and `composition/R@1`, `composition/caption_R@1` their means;
for cones also `composition/<m>/closed_form_R@1`, the parts composed by `compose_cones` instead of the learned layer.
"""

from __future__ import annotations

from multigeometry.evaluation.embed import Compositions, SplitEmbeddings
from multigeometry.evaluation.hierarchy import atom_matrix, inclusion_mask, pad_columns
from multigeometry.evaluation.retrieval import rank_blocks, slice_rows, summarize
from multigeometry.geometry.distribution import device_of
from multigeometry.geometry.similarity import SimilarityFn


def distinct_compounds(comp: Compositions) -> list[int]:
    """The first row of each distinct compound meaning, in split order."""
    seen: set[frozenset[str]] = set()
    keep = []
    for i, atoms in enumerate(comp.atoms):
        key = frozenset(atoms)
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return keep


def composition_metrics(emb: SplitEmbeddings, similarity: SimilarityFn, block_size: int = 1024) -> dict[str, float]:
    comp = emb.compositions
    if comp is None:
        return {}
    keep = distinct_compounds(comp)
    vocabulary: dict[str, int] = {}
    query_atoms = atom_matrix([comp.atoms[i] for i in keep], vocabulary)
    row_atoms = atom_matrix(emb.atoms, vocabulary)
    query_atoms, row_atoms = pad_columns(query_atoms, len(vocabulary)), pad_columns(row_atoms, len(vocabulary))
    queries = {
        "R@1": comp.composed.select(keep),
        "caption_R@1": comp.captions.select(keep),
    }
    if comp.closed_form is not None:
        queries["closed_form_R@1"] = comp.closed_form.select(keep)
    out: dict[str, float] = {}
    means: dict[str, list[float]] = {name: [] for name in queries}
    for m, items in emb.dists.items():
        device = device_of(items)
        item_atoms = row_atoms[emb.rows[m].cpu()].to(device)
        q_atoms = query_atoms.to(device)
        for name, dist in queries.items():
            dist = dist.map(lambda t, device=device: t.to(device))
            rankings = rank_blocks(
                lambda i0, i1, dist=dist, items=items: similarity(slice_rows(dist, i0, i1), items),
                lambda i0, i1, q_atoms=q_atoms, item_atoms=item_atoms: inclusion_mask(q_atoms[i0:i1], item_atoms),
                len(keep),
                block_size,
            )
            summary = summarize(rankings, (1,))
            if summary:
                out[f"composition/{m}/{name}"] = summary["R@1"]
                means[name].append(summary["R@1"])
    for name, values in means.items():
        if values:
            out[f"composition/{name}"] = sum(values) / len(values)
    if out:
        out["composition/n_compounds"] = float(len(keep))
    return out

