"""The speech cascade, an evaluation baseline beside the learned model: transcribe every clip of the split with a
Whisper model (`eval.cascade`), embed the transcripts with the text feature model (`features.text`), and rank the
split's texts (their shard features, from the same model) by cosine similarity, both ways. No training is involved,
so it says how far a pipeline of off-the-shelf parts gets on the same queries and items."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from multigeometry.config import Params
from multigeometry.data.collate import group_key
from multigeometry.evaluation.retrieval import rank_by_groups, summarize
from multigeometry.geometry.mixture import MixtureParams, point_similarity

log = logging.getLogger(__name__)


@dataclass
class SpokenSplit:
    """The split's rows that carry audio and text: waveforms, their text features and group keys, in shard order."""

    sample_ids: list[str]
    texts: list[str]
    waves: list[np.ndarray]
    sample_rate: int
    text_emb: torch.Tensor
    groups: torch.Tensor


def read_spoken_split(shards_root: Path, split: str) -> SpokenSplit:
    import soundfile as sf
    import webdataset as wds

    from multigeometry.data.datasets import read_index
    from multigeometry.data.decode import decode_members

    index = read_index(shards_root)
    if split not in index["splits"]:
        raise ValueError(f"{shards_root}: no split {split!r}")
    ids, texts, waves, embs, groups, rate = [], [], [], [], [], 0
    for shard in index["splits"][split]["shards"]:
        url = str(Path(shards_root) / split / shard["name"])
        for members in wds.tarfile_samples([{"url": url}]):
            decoded = decode_members(members, url, keep_audio_bytes=True,
                                     skip=frozenset({"image", "audio.feat", "video"}))
            if "audio.flac" not in decoded or "text.emb" not in decoded:
                continue
            wave, rate = sf.read(io.BytesIO(decoded["audio.flac"]), dtype="float32")
            ids.append(decoded["meta"]["sample_id"])
            texts.append(decoded.get("text", ""))
            waves.append(wave if wave.ndim == 1 else wave.mean(axis=1))
            embs.append(torch.from_numpy(np.asarray(decoded["text.emb"], dtype=np.float32)))
            groups.append(group_key(decoded["meta"]["group_id"]))
    if not ids:
        raise ValueError(f"{shards_root / split}: no sample has both audio and text features (features.text.model)")
    return SpokenSplit(ids, texts, waves, rate, torch.stack(embs), torch.tensor(groups, dtype=torch.long))


def cascade_metrics(params: Params, shards_root: Path, split: str, out: Path | None = None) -> dict[str, float]:
    """`cascade/audio_to_text/*`, `cascade/text_to_audio/*` and `cascade/mean_R@1`; the transcripts go to
    `out/cascade_transcripts.tsv` when `out` is given."""
    from multigeometry.data.features import load_extractor
    from multigeometry.models.catalogue import resolve_model
    from multigeometry.models.whisper_asr import WhisperTranscriber

    if not params.features.text.model:
        raise ValueError("eval.cascade needs features.text.model: the transcripts are embedded with it")
    spoken = read_spoken_split(shards_root, split)
    transcriber = WhisperTranscriber(resolve_model(params.eval.cascade))
    transcripts = transcriber.transcribe_all(spoken.waves, spoken.sample_rate)
    heard = torch.from_numpy(load_extractor("text", params.features.text, params.audio).encode(transcripts))
    audio = MixtureParams.point(F.normalize(heard, dim=-1))
    text = MixtureParams.point(F.normalize(spoken.text_emb, dim=-1))
    metrics: dict[str, float] = {}
    recalls = []
    for name, queries, items in (("audio_to_text", audio, text), ("text_to_audio", text, audio)):
        rankings = rank_by_groups(queries, items, point_similarity, spoken.groups, spoken.groups,
                                  params.eval.block_size)
        summary = summarize(rankings, params.eval.ks)
        metrics |= {f"cascade/{name}/{k}": v for k, v in summary.items()}
        recalls.append(summary["R@1"])
    metrics["cascade/mean_R@1"] = sum(recalls) / len(recalls)
    if out is not None:
        from multigeometry.io import atomic_path

        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / "cascade_transcripts.tsv") as tmp:
            lines = ["sample_id\ttext\ttranscript"] + [
                "\t".join(v.replace("\t", " ").replace("\n", " ") for v in row)
                for row in zip(spoken.sample_ids, spoken.texts, transcripts, strict=True)
            ]
            tmp.write_text("\n".join(lines) + "\n")
    log.info("cascade (%s + %s): mean R@1 %.3f on %d clips of %s", params.eval.cascade, params.features.text.model,
             metrics["cascade/mean_R@1"], len(transcripts), split)
    return metrics
