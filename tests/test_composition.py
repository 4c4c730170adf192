"""The compositional layer: the world's parts, their collation, the composer's invariances, the composition loss and
the composition metrics against a brute-force reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from multigeometry.config import ComposerConfig, DatasetPairConfig, LoaderConfig, LossConfig, ModelConfig
from multigeometry.data.collate import Collator
from multigeometry.data.world.scene import COMPOUND_LEVEL, Scene, SceneObject, caption, level_concepts, parts
from multigeometry.evaluation.composition import composition_metrics, distinct_compounds
from multigeometry.evaluation.embed import Compositions, SplitEmbeddings
from multigeometry.geometry.cone import ConeParams, compose_cone_groups, compose_cones
from multigeometry.geometry.groups import pad_groups
from multigeometry.geometry.mixture import MixtureParams, point_similarity
from multigeometry.losses import MainCriterion, info_nce
from multigeometry.models.composition import Composer, distribution_features
from multigeometry.models.heads import make_head

RED_CIRCLE = Scene((SceneObject("circle", "red", "small"),), position="left")
PAIR = Scene((SceneObject("circle", "red", "small"), SceneObject("square", "blue", "large")), relation="above")


def test_world_parts_name_the_compound_and_are_deterministic():
    for seed in range(6):
        colour, shape = parts(RED_CIRCLE, np.random.default_rng(seed))
        assert "red" in colour and "circle" not in colour
        assert "circle" in shape and "red" not in shape
        assert parts(RED_CIRCLE, np.random.default_rng(seed)) == [colour, shape]
        first, second = parts(PAIR, np.random.default_rng(seed))
        assert "red" in first and "circle" in first and "blue" in second and "square" in second
    compound = caption(RED_CIRCLE, COMPOUND_LEVEL, np.random.default_rng(0))
    assert "red" in compound and "circle" in compound and "small" not in compound


def _example(hierarchy: list[str], concepts: list[list[str]], part_list: list[str], level: int) -> dict:
    return {"sample_id": hierarchy[-1], "group_id": hierarchy[-1], "hierarchy": hierarchy, "concepts": concepts[-1],
            "hierarchy_concepts": concepts, "parts": part_list, "compound_level": level,
            "text.emb": torch.zeros(3), "hierarchy.emb": torch.randn(len(hierarchy), 3),
            "parts.emb": torch.randn(len(part_list), 3), "text": "x"}


def test_collate_points_each_compound_at_its_hierarchy_entry():
    levels = [level_concepts(RED_CIRCLE, lv) for lv in range(3)]
    pair_levels = [level_concepts(PAIR, lv) for lv in range(3)]
    examples = [
        _example(["a shape", "a circle", "a red circle"], levels, ["red", "a circle"], 2),
        _example(["two shapes", "a circle and a square", "a red circle and a blue square"], pair_levels,
                 ["a red circle", "a blue square"], 2),
        _example(["a shape", "a circle", "a circle that is red"], levels, ["something red", "circle"], 2),
        _example(["a shape", "a circle", "a red circle"], levels, [], -1),  # no parts: no compound
    ]
    collate = Collator(DatasetPairConfig(), LoaderConfig(tokenizer=""))
    batch = collate(examples)
    assert batch.compound_index.tolist() == [2, 5, 8, -1]
    assert [batch.general.raw[i] for i in (2, 5, 8)] == [
        "a red circle", "a red circle and a blue square", "a circle that is red"]
    assert batch.parts.owner.tolist() == [0, 0, 1, 1, 2, 2]
    assert batch.parts.raw[2:4] == ["a red circle", "a blue square"]
    assert batch.parts.features.shape == (6, 3) and batch.parts.tokens is None
    groups = batch.compound_group.tolist()
    assert groups[0] == groups[2] != groups[1]  # two paraphrases of one meaning share a key
    assert batch.hierarchy_parent.tolist() == [-1, 0, 1, -1, 3, 4, -1, 6, 7, -1, 9, 10]


GEOMETRIES = {
    "mixture": ModelConfig(geometry="mixture", embed_dim=8, n_components=3),
    "point": ModelConfig(geometry="point", embed_dim=8, n_components=1),
    "cone": ModelConfig(geometry="cone", embed_dim=8),
}


def _random_parts(cfg: ModelConfig, n: int, seed: int = 0):
    torch.manual_seed(seed)
    return make_head(16, cfg)(torch.randn(n, 16))


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_composer_is_invariant_to_part_order_and_takes_any_number_of_parts(geometry: str):
    cfg = GEOMETRIES[geometry]
    torch.manual_seed(1)
    composer = Composer(cfg)
    part_dists = _random_parts(cfg, 7)
    owner = torch.tensor([0, 0, 1, 1, 1, 2, 2])  # 2, 3 and 2 parts
    out = composer(part_dists, owner, 3)
    perm = torch.tensor([6, 2, 0, 4, 5, 1, 3])
    shuffled = composer(part_dists.map(lambda t: t[perm]), owner[perm], 3)
    expected_type = ConeParams if geometry == "cone" else MixtureParams
    assert isinstance(out, expected_type) and out.batch_size == 3
    for a, b in zip(_tensors(out), _tensors(shuffled), strict=True):
        torch.testing.assert_close(a, b)
    # a compound is its own parts' function: changing compound 0's parts leaves compounds 1 and 2 unchanged
    other = _random_parts(cfg, 7, seed=5)
    mixed = part_dists.map(lambda t: t.clone())
    mixed = _replace_rows(mixed, other, torch.tensor([0, 1]))
    changed = composer(mixed, owner, 3)
    for a, b in zip(_tensors(out), _tensors(changed), strict=True):
        torch.testing.assert_close(a[1:], b[1:])
    assert not all(torch.allclose(a[:1], b[:1]) for a, b in zip(_tensors(out), _tensors(changed), strict=True))
    loss = sum(t.float().sum() for t in _tensors(out))
    loss.backward()
    assert all(p.grad is not None for p in composer.parameters())


def test_mixture_features_ignore_the_order_of_components():
    cfg = GEOMETRIES["mixture"]
    dist = _random_parts(cfg, 4)
    perm = torch.tensor([2, 0, 1])
    permuted = MixtureParams(dist.logits[:, perm], dist.mu[:, perm], dist.logvar[:, perm])
    torch.testing.assert_close(distribution_features(dist, cfg), distribution_features(permuted, cfg))


def _tensors(dist) -> list[torch.Tensor]:
    if isinstance(dist, ConeParams):
        return [dist.direction, dist.theta]
    return [t for t in (dist.logits, dist.mu, dist.logvar) if t is not None]


def _replace_rows(dist, other, rows: torch.Tensor):
    def put(t: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        t[rows] = src[rows]
        return t
    if isinstance(dist, ConeParams):
        return ConeParams(put(dist.direction, other.direction), put(dist.theta, other.theta))
    logvar = None if dist.logvar is None else put(dist.logvar, other.logvar)
    return MixtureParams(put(dist.logits, other.logits), put(dist.mu, other.mu), logvar)


def test_composition_loss_leaves_same_meaning_rows_out_of_the_negatives():
    cfg = ModelConfig(geometry="point", embed_dim=8, n_components=1)
    crit = MainCriterion(LossConfig(similarity="point"), cfg)
    composed, compound = _random_parts(cfg, 5, 0), _random_parts(cfg, 5, 1)
    meaning = torch.tensor([0, 1, 0, 2, 3])
    got = crit.composition(composed, compound, meaning)
    logits = crit.logit_scale() * point_similarity(composed, compound)
    mask = (meaning[:, None] == meaning[None, :]) & ~torch.eye(5, dtype=torch.bool)
    logits = logits.masked_fill(mask, float("-inf"))
    target = torch.arange(5)
    want = (torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.T, target)) / 2
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got, info_nce(point_similarity(composed, compound), crit.logit_scale(), None,
                                             meaning, meaning, 0.0, True))


def _point(x: torch.Tensor) -> MixtureParams:
    return MixtureParams.point(torch.nn.functional.normalize(x, dim=-1))


def test_composition_metrics_match_brute_force():
    g = torch.Generator().manual_seed(3)
    n_items, n_comp, d = 40, 12, 5
    item_atoms = [sorted({f"a{int(a)}" for a in torch.randint(0, 6, (3,), generator=g)}) for _ in range(n_items)]
    # compounds: atom sets drawn from the items' (so most have positives), some repeated with another caption
    comp_atoms = [item_atoms[int(i)][:2] for i in torch.randint(0, n_items, (n_comp,), generator=g)]
    comp_atoms[5] = list(comp_atoms[1])
    composed, captions = _point(torch.randn(n_comp, d, generator=g)), _point(torch.randn(n_comp, d, generator=g))
    images, texts = _point(torch.randn(n_items, d, generator=g)), _point(torch.randn(n_items // 2, d, generator=g))
    emb = SplitEmbeddings(split="test", sample_ids=[str(i) for i in range(n_items)],
                          group_ids=torch.arange(n_items), hierarchy=[[] for _ in range(n_items)], atoms=item_atoms)
    emb.dists = {"image": images, "text": texts}
    emb.rows = {"image": torch.arange(n_items), "text": torch.arange(0, n_items, 2)}
    closed = _point(torch.randn(n_comp, d, generator=g))
    emb.compositions = Compositions(composed, captions, [f"c{i}" for i in range(n_comp)], comp_atoms,
                                    closed_form=closed)
    got = composition_metrics(emb, point_similarity, block_size=5)

    keep = distinct_compounds(emb.compositions)
    assert 5 not in keep and len(keep) == len({frozenset(a) for a in comp_atoms})
    for name, queries in (("R@1", composed), ("caption_R@1", captions), ("closed_form_R@1", closed)):
        per_modality = []
        for m in ("image", "text"):
            rows = emb.rows[m].tolist()
            hits = []
            for q in keep:
                positives = [set(comp_atoms[q]) <= set(item_atoms[r]) for r in rows]
                if not any(positives):
                    continue
                scores = (queries.mu[q, 0] @ emb.dists[m].mu[:, 0].T).tolist()
                hits.append(positives[int(np.argmax(scores))])
            assert got[f"composition/{m}/{name}"] == pytest.approx(float(np.mean(hits)))
            per_modality.append(float(np.mean(hits)))
        assert got[f"composition/{name}"] == pytest.approx(sum(per_modality) / 2)
    assert got["composition/n_compounds"] == len(keep)


def test_composer_learns_to_land_on_the_compound_and_generalises_to_unseen_pairs():
    """A world of 6 colours x 6 shapes whose compound embeddings are normalize(colour + shape + noise): trained with
    the composition loss on 24 pairs, compose(colour, shape) must find the held-out pairs' compounds too."""
    torch.manual_seed(0)
    cfg = ModelConfig(geometry="mixture", embed_dim=16, n_components=2, composer=ComposerConfig(hidden_dim=64))
    crit = MainCriterion(LossConfig(), cfg)
    colours, shapes = torch.randn(6, 16), torch.randn(6, 16)
    pairs_all = [(c, s) for c in range(6) for s in range(6)]
    held_out = pairs_all[::3]
    train_pairs = [p for p in pairs_all if p not in held_out]

    def point_mixture(x: torch.Tensor) -> MixtureParams:  # K identical unit means, small variances
        mu = torch.nn.functional.normalize(x, dim=-1)[:, None].expand(-1, 2, -1)
        return MixtureParams(torch.zeros(len(x), 2), mu, torch.full_like(mu, -8.0))

    def batch(pairs: list[tuple[int, int]]) -> tuple[MixtureParams, torch.Tensor, MixtureParams]:
        parts_x = torch.stack([v for c, s in pairs for v in (colours[c], shapes[s])])
        owner = torch.arange(len(pairs)).repeat_interleave(2)
        compound = torch.stack([colours[c] + shapes[s] for c, s in pairs])
        return point_mixture(parts_x), owner, point_mixture(compound)

    composer = Composer(cfg)
    optimizer = torch.optim.Adam(composer.parameters(), lr=3e-3)
    parts_d, owner, compound = batch(train_pairs)
    meaning = torch.arange(len(train_pairs))
    first = None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: thread start-up costs more than it saves
    try:
        for _ in range(200):
            loss = crit.composition(composer(parts_d, owner, len(train_pairs)), compound, meaning)
            first = float(loss.detach()) if first is None else first
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    assert float(loss) < 0.5 * first
    with torch.no_grad():
        parts_d, owner, compound = batch(held_out)
        sim = crit.similarity(composer(parts_d, owner, len(held_out)), compound)
    r1 = float((sim.argmax(1) == torch.arange(len(held_out))).float().mean())
    assert r1 >= 0.5, r1  # chance is 1/12


def test_pad_groups_keeps_each_groups_rows_in_order():
    x = torch.arange(6.0)[:, None].expand(-1, 2)
    padded, mask = pad_groups(x, torch.tensor([2, 0, 2, 2, 0, 1]), 4, -1.0)
    assert padded.shape == (4, 3, 2)
    assert padded[:, :, 0].tolist() == [[1, 4, -1], [5, -1, -1], [0, 2, 3], [-1, -1, -1]]
    assert mask.sum(1).tolist() == [2, 1, 3, 0]


def test_ragged_cone_composition_equals_compose_cones_per_group():
    torch.manual_seed(0)
    cfg = GEOMETRIES["cone"]
    parts = _random_parts(cfg, 6)
    owner = torch.tensor([1, 0, 1, 2, 1, 0])  # 2, 3 and 1 parts
    got = compose_cone_groups(parts, owner, 3)
    for g in range(3):
        idx = torch.nonzero(owner == g).squeeze(1)
        want = compose_cones(parts.map(lambda t, idx=idx: t[idx][None]))
        torch.testing.assert_close(got.direction[g], want.direction[0])
        torch.testing.assert_close(got.theta[g], want.theta[0])
    torch.testing.assert_close(got.theta[2], parts.theta[3])  # one part composes to itself


def test_training_composes_a_random_subset_of_the_compounds_with_only_their_parts():
    from multigeometry.data.batch import Batch, Texts
    from multigeometry.models.pair_model import PairModel

    torch.manual_seed(0)
    cfg = ModelConfig(geometry="mixture", embed_dim=4, n_components=2, trunk="linear")
    model = PairModel(cfg, ["image", "text"], feature_dims={"image": 3, "text": 4}).eval()
    # 6 rows: rows 0-4 are compounds with 2, 1, 3, 2, 2 parts; row 5 has none
    counts = [2, 1, 3, 2, 2]
    parts_owner = torch.tensor([r for r, c in enumerate(counts) for _ in range(c)])
    parts_texts = Texts(parts_owner, [f"part {p}" for p in range(len(parts_owner))],
                        torch.arange(len(parts_owner)), features=torch.randn(len(parts_owner), 4))
    batch = Batch(torch.arange(6), {}, [], {}, parts=parts_texts, compound_index=torch.tensor([0, 1, 2, 3, 4, -1]))
    parts, owner, rows = model.compound_parts(batch)
    assert rows.tolist() == [0, 1, 2, 3, 4] and parts.batch_size == len(parts_owner)
    assert model.compound_parts(batch, max_rows=5)[2].tolist() == rows.tolist()
    seen = set()
    for _ in range(20):
        sub_parts, sub_owner, sub_rows = model.compound_parts(batch, max_rows=2)
        assert len(sub_rows) == 2 and sub_rows.tolist() == sorted(sub_rows.tolist())
        seen.update(sub_rows.tolist())
        # each kept compound brings exactly its own parts, encoded as in the full call
        expected = [p for p, r in enumerate(parts_owner.tolist()) if r in sub_rows.tolist()]
        assert sub_owner.tolist() == [sub_rows.tolist().index(parts_owner[p].item()) for p in expected]
        torch.testing.assert_close(sub_parts.mu, parts.mu[torch.tensor(expected)])
    assert seen == {0, 1, 2, 3, 4}  # every compound is drawn sometime


def test_the_composition_term_runs_on_every_nth_training_step_only():
    from multigeometry.data.batch import Batch, Texts
    from multigeometry.models.pair_model import PairModel
    from multigeometry.training.objective import TrainModule

    torch.manual_seed(0)
    cfg = ModelConfig(geometry="mixture", embed_dim=4, n_components=2, trunk="linear",
                      composer=ComposerConfig(every=3, max_compounds=0))
    module = TrainModule(PairModel(cfg, ["image", "text"], feature_dims={"image": 3, "text": 4}),
                         MainCriterion(LossConfig(composition_weight=1.0), cfg))
    n, owner = 4, torch.arange(4).repeat_interleave(2)
    batch = Batch(torch.arange(n), {m: torch.ones(n, dtype=torch.bool) for m in ("image", "text")},
                  [("image", "text", 1.0)], {"image.emb": torch.randn(n, 3), "text.emb": torch.randn(n, 4)},
                  general=Texts(torch.arange(n), [f"c{i}" for i in range(n)], torch.arange(n),
                                features=torch.randn(n, 4)),
                  parts=Texts(owner, [f"p{i}" for i in range(2 * n)], torch.arange(2 * n),
                              features=torch.randn(2 * n, 4)),
                  compound_index=torch.arange(n), compound_group=torch.arange(n))
    composed = []
    for step in range(7):
        module.criterion.step = step
        terms = module.train()(batch)
        composed.append("composition" in terms)
        if step % 3:  # no composition term: the composer gets no gradient that step
            terms["loss"].backward()
            assert all(p.grad is None for p in module.model.composer.parameters())
            module.zero_grad(set_to_none=True)
    assert composed == [True, False, False, True, False, False, True]
    module.criterion.step = 1
    assert "composition" in module.eval()(batch)  # validation always scores it
