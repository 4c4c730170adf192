"""The video encoder over frame features: meanP (a bag of frames) and seqTransf (positions and a small transformer),
built from params, collated, and trained in a video-text pair."""

from __future__ import annotations

import pytest
import torch

from multigeometry.config import LoaderConfig, ParamsError, VideoEncoderConfig, params_from_dict
from multigeometry.data.collate import Collator
from multigeometry.geometry.distribution import select_rows
from multigeometry.losses import MainCriterion
from multigeometry.models.encoders import VideoEncoder, build_encoder
from multigeometry.models.pair_model import PairModel
from multigeometry.models.temporal import MeanPool, SeqTransf, make_temporal, shuffled_order
from multigeometry.training.objective import TrainModule

T, D = 4, 8


def test_mean_pooling_ignores_the_order_and_a_fresh_seq_transf_equals_it():
    torch.manual_seed(0)
    frames = torch.randn(3, T, D)
    backwards = frames.flip(1)
    mean = make_temporal("meanP", D)
    assert isinstance(mean, MeanPool)
    torch.testing.assert_close(mean(frames), mean(backwards))
    seq = make_temporal("seqTransf", D, width=8, layers=1, heads=2)
    assert isinstance(seq, SeqTransf)
    torch.testing.assert_close(seq(frames), frames.mean(1))  # its output map starts at zero
    torch.nn.init.normal_(seq.up.weight)
    assert not torch.allclose(seq(frames), seq(backwards), atol=1e-4)  # positions: the order shows
    with pytest.raises(ValueError, match="65 frames, more than the 64 positions"):
        seq(torch.randn(1, 65, D))
    with pytest.raises(ValueError, match=r"model\.video\.temporal: unknown 'maxP'"):
        make_temporal("maxP", D)


def _order_task(temporal: str, steps: int = 150, deltas: bool = False, appearance: float = 1.0,
                motion_scale: float = 1.0) -> float:
    """Train the pooling and a linear probe to tell a clip from the clip played backwards; held-out accuracy."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    pool = make_temporal(temporal, D, width=16, layers=1, heads=2, deltas=deltas)
    probe = torch.nn.Linear(D, 1)
    optimiser = torch.optim.Adam([*pool.parameters(), *probe.parameters()], lr=1e-2)

    motion = motion_scale * torch.randn(D, generator=gen)  # "moving left": frames drift along it; backwards, against it

    def data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        steps = torch.arange(T, dtype=torch.float32) - (T - 1) / 2
        clips = appearance * torch.randn(n, 1, D, generator=gen) + steps[None, :, None] * motion
        flip = torch.rand(n, generator=gen) < 0.5
        clips[flip] = clips[flip].flip(1)  # the same frames, so the same mean
        return clips, flip.float()

    for _ in range(steps):
        clips, labels = data(64)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(probe(pool(clips)).squeeze(1), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    clips, labels = data(512)
    with torch.no_grad():
        return float(((probe(pool(clips)).squeeze(1) > 0).float() == labels).float().mean())


def test_only_the_temporal_transformer_tells_a_clip_from_the_clip_played_backwards():
    assert _order_task("meanP") < 0.6  # a bag of frames sits at chance
    assert _order_task("seqTransf") > 0.9


def test_frame_differences_let_seq_transf_see_a_faint_motion_under_a_strong_appearance():
    torch.manual_seed(0)
    frames = torch.randn(3, T, D)
    seq = make_temporal("seqTransf", D, width=8, layers=1, heads=2, deltas=True)
    torch.testing.assert_close(seq(frames), frames.mean(1))  # still meanP when fresh
    faint = {"appearance": 10.0, "motion_scale": 0.1}  # pooled image features: what moves hardly shows
    with_deltas = _order_task("seqTransf", deltas=True, **faint)
    print(f"faint motion: seqTransf {_order_task('seqTransf', **faint):.3f}, with deltas {with_deltas:.3f}")
    assert with_deltas > 0.9


def test_the_video_encoder_pools_frame_features_before_the_trunk():
    cfg = VideoEncoderConfig(hidden_dim=16, layers=1, temporal_width=8, temporal_heads=2)
    encoder = build_encoder("video", cfg, feature_dim=D, feature_norm="l2")
    assert isinstance(encoder, VideoEncoder) and encoder.out_dim == 16
    out = encoder({"video.emb": torch.randn(5, T, D)})
    assert out.shape == (5, 16)
    with pytest.raises(ValueError, match=r"model\.video: batch\['video\.emb'\] must be frame features"):
        encoder({"video.emb": torch.randn(5, D)})
    with pytest.raises(ParamsError, match=r"model\.video\.input: emb needs pretrained video features"):
        build_encoder("video", cfg, feature_dim=None)


def test_raw_frames_are_sampled_per_segment_and_resized():
    import numpy as np

    from multigeometry.config import VideoConfig
    from multigeometry.data.frame_sampling import VideoSampler

    decoded = np.stack([np.full((12, 20, 3), 10 * i, dtype=np.uint8) for i in range(8)])  # frame i is all 10 * i
    frames = VideoSampler(VideoConfig(num_frames=4, frame_side=16)).frames(decoded)
    assert frames.shape == (4, 3, 16, 16) and frames.dtype == torch.float32
    # the centres of 4 equal segments of 8 frames: 1, 3, 5, 7 (segment_indices), a flat frame stays flat when resized
    torch.testing.assert_close(frames[:, 0, 0, 0], torch.tensor([10.0, 30.0, 50.0, 70.0]) / 255)
    # not square: the short side to 16, then the centre square (a frame whose columns count up keeps its middle ones)
    columns = np.broadcast_to(np.arange(40, dtype=np.uint8)[None, None, :, None] * 6, (8, 10, 40, 3)).copy()
    wide = VideoSampler(VideoConfig(num_frames=4, frame_side=10)).frames(columns)
    assert wide.shape == (4, 3, 10, 10)
    torch.testing.assert_close(wide[0, 0, 0], torch.arange(15, 25, dtype=torch.float32) * 6 / 255)
    with pytest.raises(ValueError, match=r"video: expected decoded frames \(frames, height, width, 3\)"):
        VideoSampler(VideoConfig()).frames(decoded[..., 0])


def test_video_encoder_params_are_checked():
    with pytest.raises(ParamsError, match=r"model\.video\.temporal_heads \(3\) must divide"):
        VideoEncoderConfig(temporal_heads=3, temporal_width=8)
    with pytest.raises(ParamsError, match=r"model\.video\.input: raw needs a torchvision video model"):
        VideoEncoderConfig(input="raw")
    with pytest.raises(ParamsError, match=r"unknown torchvision video architecture 'resnet18'.*r3d_18"):
        build_encoder("video", VideoEncoderConfig(input="raw", backbone="torchvision:resnet18"))
    params = params_from_dict({"model": {"video": {"temporal": "meanP"}}})
    assert params.model.video.temporal == "meanP" and params.model.video.hidden_dim == params.model.image.hidden_dim


def _examples(n: int) -> list[dict]:
    gen = torch.Generator().manual_seed(2)
    return [{"sample_id": f"s{i}", "group_id": f"g{i}", "hierarchy": [], "concepts": [], "hierarchy_concepts": [],
             "parts": [], "compound_level": -1, "ambiguity": {}, "video.emb": torch.randn(T, D, generator=gen),
             "text.emb": torch.randn(10, generator=gen)} for i in range(n)]


@pytest.mark.parametrize("temporal", ["meanP", "seqTransf"])
def test_a_video_text_pair_collates_and_trains(temporal):
    params = params_from_dict({
        "pairs": {"pairs": [{"a": "video", "b": "text"}]},
        "model": {"embed_dim": 6, "n_components": 2, "video": {"hidden_dim": 16, "layers": 1, "temporal": temporal,
                                                               "temporal_width": 8, "temporal_heads": 2},
                  "text": {"hidden_dim": 16, "layers": 1, "init": "random"}},
        "loss": {"mixup": 0.5, "objective": "sigmoid"},
    })
    collator = Collator(params.pairs, LoaderConfig(tokenizer=""))
    batch = collator(_examples(6))
    assert batch.inputs["video.emb"].shape == (6, T, D) and bool(batch.present["video"].all())
    assert batch.pairs == [("video", "text", 1.0)]
    torch.manual_seed(0)
    model = PairModel(params.model, ["video", "text"], feature_dims={"video": D, "text": 10})
    module = TrainModule(model, MainCriterion(params.loss, params.model))
    loss = module(batch)["loss"]
    loss.backward()
    trained = [*model.heads["video"].parameters(), *model.encoders["video"].temporal.parameters()]
    assert torch.isfinite(loss) and all(p.grad is not None for p in trained if p.requires_grad)
    assert (temporal == "seqTransf") == any(True for _ in model.encoders["video"].temporal.parameters())


def test_the_temporal_check_matches_brute_force():
    from multigeometry.evaluation.temporal import TemporalSet, temporal_metrics

    gen = torch.Generator().manual_seed(3)
    n, dim = 7, 5
    captions, forward, backward, shuffled = (torch.randn(n, dim, generator=gen) for _ in range(4))
    backward[2] = forward[2]  # a tie: half a hit
    owner = torch.tensor([0, 0, 1, 2, 3, 4, 5, 6, 6])
    contrasts = torch.randn(len(owner), dim, generator=gen)
    t = TemporalSet(captions, forward, backward, shuffled, contrasts, owner)

    def sim(a, b):
        return a @ b.T

    def brute() -> tuple[float, float]:
        t2v, v2t = [], []
        for i in range(n):
            own = float(captions[i] @ forward[i])
            others = [float(captions[i] @ backward[i]), float(captions[i] @ shuffled[i])]
            t2v.append(0.0 if max(others) > own else 1.0 / (1 + sum(o == own for o in others)))
            texts = [float(contrasts[j] @ forward[i]) for j in range(len(owner)) if owner[j] == i]
            v2t.append(0.0 if max(texts) > own else 1.0 / (1 + sum(o == own for o in texts)))
        return sum(t2v) / n, sum(v2t) / n

    metrics = temporal_metrics(t, sim)
    t2v, v2t = brute()
    assert metrics["text_to_video/temporal_R@1"] == pytest.approx(t2v)
    assert metrics["video_to_text/temporal_R@1"] == pytest.approx(v2t)
    assert metrics["video/temporal_R@1"] == pytest.approx((t2v + v2t) / 2)
    order = shuffled_order(4)
    assert sorted(order.tolist()) == [0, 1, 2, 3] and order.tolist() not in ([0, 1, 2, 3], [3, 2, 1, 0])
    assert shuffled_order(2) is None


def test_a_bag_of_frames_sits_at_chance_on_the_clip_side_of_the_temporal_check():
    from multigeometry.evaluation.temporal import TemporalSet, temporal_metrics

    torch.manual_seed(0)
    frames = torch.randn(6, T, D)
    pool = make_temporal("meanP", D)
    order = torch.tensor([2, 0, 3, 1])
    clips = [pool(frames), pool(frames.flip(1)), pool(frames[:, order])]
    t = TemporalSet(torch.randn(6, D), *clips, torch.randn(6, D), torch.arange(6))
    metrics = temporal_metrics(t, lambda a, b: a @ b.T)
    assert metrics["text_to_video/temporal_R@1"] == pytest.approx(1 / 3)


def _temporal_batch(params):
    gen = torch.Generator().manual_seed(4)
    examples = _examples(5)
    for i, e in enumerate(examples):
        n = (1, 2, 0, 1, 1)[i]  # row 2 has no contrast (a spinning or still clip): not checked
        e["temporal_contrasts"] = [f"row {i} contrast {j}" for j in range(n)]
        if n:
            e["temporal_contrasts.emb"] = torch.randn(n, 10, generator=gen)
    examples[3].pop("video.emb")  # no clip: not checked
    return Collator(params.pairs, LoaderConfig(tokenizer=""))(examples)


def test_the_temporal_term_matches_brute_force_and_trains_the_order():
    from multigeometry.training.temporal_term import temporal_term

    params = params_from_dict({
        "pairs": {"pairs": [{"a": "video", "b": "text"}]},
        "model": {"embed_dim": 6, "n_components": 2, "video": {"hidden_dim": 16, "layers": 1, "temporal_width": 8,
                                                               "temporal_heads": 2},
                  "text": {"hidden_dim": 16, "layers": 1, "init": "random"}},
    })
    batch = _temporal_batch(params)
    torch.manual_seed(0)
    model = PairModel(params.model, ["video", "text"], feature_dims={"video": D, "text": 10})
    criterion = MainCriterion(params.loss, params.model)
    term = temporal_term(model, criterion, batch)

    scale = float(criterion.logit_scale().detach())
    texts = model.encode(batch.inputs, "text")
    contrasts = model.encode_texts(batch.temporal_contrasts)
    frames = batch.inputs["video.emb"]
    order = shuffled_order(T)
    clips = [model.encode({"video.emb": x}, "video") for x in (frames, frames.flip(1), frames[:, order])]
    owner = batch.temporal_contrasts.owner.tolist()
    losses_t2v, losses_v2t = [], []
    for row in (0, 1, 4):
        def sim(a, ai, b, bi):
            return criterion.similarity(select_rows(a, torch.tensor([ai])), select_rows(b, torch.tensor([bi])))[0, 0]

        own = [sim(texts, row, c, row) for c in clips]
        losses_t2v.append(-torch.log_softmax(scale * torch.stack(own), 0)[0])
        against = [sim(contrasts, j, clips[0], row) for j, o in enumerate(owner) if o == row]
        losses_v2t.append(-torch.log_softmax(scale * torch.stack([own[0], *against]), 0)[0])
    brute = (torch.stack(losses_t2v).mean() + torch.stack(losses_v2t).mean()) / 2
    torch.testing.assert_close(term, brute, rtol=1e-4, atol=1e-5)

    module = TrainModule(model, criterion)
    out = module(batch)
    assert float(out["temporal"]) == pytest.approx(float(term), rel=1e-4)
    out["loss"].backward()
    seq = model.encoders["video"].temporal
    assert seq.up.weight.grad is not None and float(seq.up.weight.grad.abs().sum()) > 0  # the order is trained
