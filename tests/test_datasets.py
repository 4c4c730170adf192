from __future__ import annotations

from collections import Counter

import pytest
import torch

from multigeometry.config import params_from_dict
from multigeometry.data.collate import Collator, group_key
from multigeometry.data.datasets import IterableStylePairDataset, PairDataset, make_loader, read_index
from multigeometry.data.shard_index import ShardIntegrityError
from multigeometry.data.transforms import image_transform
from multigeometry.stages.shard import shard
from multigeometry.stages.validate import validate
from tests.conftest import still

NO_FEATURES = {m: {"model": ""} for m in ("image", "text", "audio", "code")}
RAW_INPUTS = {m: {"input": "raw"} for m in ("image", "text", "audio", "code")}


def loader_params(model=RAW_INPUTS, **loader):
    return params_from_dict(still(
        {
            "data": {"world": {"n_items": 12, "workers": 1, "image_size": 64}},
            "features": NO_FEATURES,
            "model": model,
            "shard": {"max_samples": 2, "workers": 1},
            "loader": {"batch_size": 2, "workers": 2, "shuffle_buffer": 4, "tokenizer": "", **loader},
        }
    ))


@pytest.fixture(scope="module")
def shards(prepared_world):
    params, root = prepared_world
    validate(params, root)
    return shard(loader_params(), root), root


def _ids(loader) -> list[str]:
    return [sid for batch in loader for sid in batch.sample_id]


def test_two_ranks_two_workers_see_every_training_sample_once(shards):
    out, _root = shards
    params = loader_params()
    expected = read_index(out)["splits"]["train"]["samples"]
    seen: Counter = Counter()
    for rank in range(2):
        dataset = IterableStylePairDataset(out, "train", params, train=True, rank=rank, world_size=2)
        seen.update(_ids(make_loader(dataset, params, workers=2)))
    assert sum(seen.values()) == expected
    assert all(count == 1 for count in seen.values())


def test_epochs_shuffle_differently_but_reproducibly(shards):
    out, _root = shards
    params = loader_params()

    def order(epoch):
        dataset = IterableStylePairDataset(out, "train", params, train=True)
        dataset.set_epoch(epoch)
        return [e["sample_id"] for e in dataset]

    assert order(0) == order(0)
    assert order(0) != order(1)
    assert sorted(order(0)) == sorted(order(1))


def test_fewer_shards_than_workers_is_a_clear_error(shards):
    out, _root = shards
    params = loader_params()
    shard_count = len(read_index(out)["splits"]["train"]["shards"])
    dataset = IterableStylePairDataset(out, "train", params, rank=0, world_size=shard_count + 1)
    with pytest.raises(ValueError, match=r"exact mode needs at least \d+"):
        next(iter(dataset))


def test_resampled_mode_gives_every_rank_the_same_number_of_batches(shards):
    out, _root = shards
    params = loader_params(resampled=True)
    lengths = []
    for rank in range(3):  # more ranks than shards per rank would allow in exact mode
        dataset = IterableStylePairDataset(out, "train", params, train=True, rank=rank, world_size=3)
        lengths.append(len(list(make_loader(dataset, params, workers=0))))
    assert len(set(lengths)) == 1 and lengths[0] > 0


def test_map_style_and_streaming_yield_the_same_samples(shards):
    out, root = shards
    params = loader_params()
    normalization = read_index(out)["normalization"]
    streamed = {e["sample_id"]: e for e in IterableStylePairDataset(out, "val", params)}
    mapped = PairDataset(params, "val", root=root, normalization=normalization)
    assert len(mapped) == len(streamed) > 0
    collate = Collator(params.pairs, params.loader)
    for i in range(len(mapped)):
        a = mapped[i]
        b = streamed[a["sample_id"]]
        assert set(a) == set(b)
        for key, value in a.items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(value, b[key])
            else:
                assert value == b[key]
    batch_a = collate([mapped[i] for i in range(len(mapped))])
    batch_b = collate([streamed[mapped[i]["sample_id"]] for i in range(len(mapped))])
    torch.testing.assert_close(batch_a.inputs["audio"], batch_b.inputs["audio"])
    torch.testing.assert_close(batch_a.inputs["image"], batch_b.inputs["image"])


def test_collated_batch_marks_groups_and_pairs(shards):
    out, _root = shards
    params = loader_params()
    examples = list(IterableStylePairDataset(out, "train", params))[:3]
    examples.append(dict(examples[0], sample_id="copy"))  # a second caption of the first group
    batch = Collator(params.pairs, params.loader)(examples)
    assert batch.group_ids[0] == batch.group_ids[3] == group_key(examples[0]["group_id"])
    assert batch.group_ids[1] != batch.group_ids[0]
    assert batch.inputs["image"].shape == (4, 3, 96, 96)
    assert batch.inputs["audio"].shape[:2] == (4, 80)
    assert int(batch.inputs["audio_lengths"].max()) == batch.inputs["audio"].shape[2]
    assert [p[:2] for p in batch.pairs] == [("image", "text"), ("audio", "text"), ("code", "text")]
    assert batch.raw["text"][0] == examples[0]["text"]


def test_models_that_read_features_only_decode_no_images_log_mels_or_tokens(shards):
    """An encoder with `input: emb` reads `<modality>.emb`; raw images and log-mels of that modality are not decoded,
    and text is tokenised only for an encoder that reads tokens."""
    out, root = shards
    emb_only = loader_params(model={}, tokenizer="unused")
    mixed = loader_params(model={"image": {"input": "raw"}}, tokenizer="unused")
    for params, has_image in ((emb_only, False), (mixed, True)):
        examples = list(IterableStylePairDataset(out, "train", params))[:2]
        assert all(("image" in e) == has_image and "audio" not in e for e in examples)
        mapped = PairDataset(params, "val", root=root)[0]
        assert ("image" in mapped) == has_image and "audio" not in mapped
        batch = next(iter(make_loader(IterableStylePairDataset(out, "train", params), params, workers=0)))
        # no encoder reads tokens: none made, for the captions nor for the hierarchy, parts and contrasts
        assert "text" not in batch.inputs and "code" not in batch.inputs
        assert all(t.tokens is None for t in (batch.general, batch.parts, batch.temporal_contrasts))
        assert batch.raw["text"] and batch.general.raw


def test_feature_only_models_read_each_shard_once_and_later_epochs_yield_the_same(shards, tmp_path):
    import shutil

    out, _root = shards
    copy = tmp_path / "shards"
    shutil.copytree(out, copy)
    for cache_mb, second_epoch_reads in ((64, False), (0, True)):
        params = loader_params(model={}, cache_mb=cache_mb)
        dataset = IterableStylePairDataset(copy, "train", params, train=True)
        first = _ids(make_loader(dataset, params, workers=0))
        moved = tmp_path / "moved"
        shutil.move(copy / "train", moved)  # later epochs must not need the files
        try:
            dataset.set_epoch(0)
            if second_epoch_reads:
                with pytest.raises(ShardIntegrityError, match="missing"):
                    _ids(make_loader(dataset, params, workers=0))
            else:
                assert _ids(make_loader(dataset, params, workers=0)) == first
                dataset.set_epoch(1)
                assert sorted(_ids(make_loader(dataset, params, workers=0))) == sorted(first)
        finally:
            shutil.move(moved, copy / "train")


def test_a_sample_with_only_features_of_a_modality_carries_it():
    params = loader_params(model={})
    examples = [{"sample_id": f"s{i}", "group_id": f"g{i}", "hierarchy": [], "concepts": [], "text": "a cat",
                 "image.emb": torch.ones(3)} for i in range(2)]
    batch = Collator(params.pairs, params.loader, tokenize=False)(examples)
    assert batch.present["image"].all() and not batch.present["audio"].any()
    assert batch.inputs["image.emb"].shape == (2, 3) and "image" not in batch.inputs
    assert [p[:2] for p in batch.pairs] == [("image", "text")]


def test_tokenised_text_uses_the_configured_tokenizer(shards):
    from transformers import BertTokenizerFast

    out, _root = shards
    params = loader_params(tokenizer="unused", max_tokens=8, padding="max_length")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "red", "circle", "small", "left", "of"]
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)})
    examples = list(IterableStylePairDataset(out, "train", params))[:2]
    batch = Collator(params.pairs, params.loader, tokenizer)(examples)
    assert batch.inputs["text"]["input_ids"].shape == (2, 8)
    assert batch.inputs["text"]["attention_mask"].dtype == torch.long
    assert batch.general.tokens["input_ids"].shape == (len(batch.general), 8)  # the hierarchy's texts too


def test_train_augmentation_is_random_and_eval_is_not():
    from PIL import Image

    params = loader_params()
    image = Image.new("RGB", (64, 64))
    for x in range(0, 32):
        for y in range(64):
            image.putpixel((x, y), (255, 0, 0))
    train, evaluate = image_transform(params.loader.augment, True), image_transform(params.loader.augment, False)
    torch.manual_seed(0)
    assert not torch.equal(train(image), train(image))
    assert torch.equal(evaluate(image), evaluate(image))
    out = evaluate(image)
    assert out.shape == (3, 96, 96)
    # no flip by default: the red half stays on the left
    assert out[0, :, :40].mean() > out[0, :, 56:].mean()
