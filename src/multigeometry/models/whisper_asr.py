"""Whisper as a transcriber, for the speech cascade baseline (transcribe, then embed the transcript with the text
feature model): the whole CTranslate2 model (encoder and decoder) converted once into a transformers
`WhisperForConditionalGeneration` folder, and greedy decoding of 30 s log-mel windows, as Whisper was trained.

Decoding follows Whisper's English-only recipe: the prompt <|startoftranscript|><|notimestamps|>, the model's
`suppress_tokens` at every step and `begin_suppress_tokens` at the first, argmax until <|endoftext|>.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from multigeometry.config import AudioConfig
from multigeometry.data.audio import hop_samples, log_mel
from multigeometry.models.ct2_whisper import (
    CT2FormatError,
    CT2Model,
    read_ct2_model,
    whisper_config_from_ct2,
    whisper_encoder_state_dict,
)

log = logging.getLogger(__name__)

TOKENIZER = "tokenizer.json"


def whisper_decoder_state_dict(model: CT2Model, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The state dict of a transformers `WhisperDecoder` from a CTranslate2 Whisper model's ``decoder/*`` variables
    (fused q/k/v of self-attention and k/v of cross-attention split; the output projection is the tied embedding)."""
    get = model.float_tensor
    d_model = model.resolve("decoder/embeddings/weight").shape[1]
    sd = {
        "embed_tokens.weight": get("decoder/embeddings/weight", dtype),
        "embed_positions.weight": get("decoder/position_encodings/encodings", dtype),
        "layer_norm.weight": get("decoder/layer_norm/gamma", dtype),
        "layer_norm.bias": get("decoder/layer_norm/beta", dtype),
    }

    def split(name: str, parts: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        w, b = get(f"{name}/weight", dtype), get(f"{name}/bias", dtype)
        if w.shape[0] != parts * d_model:
            raise CT2FormatError(f"{model.path}: {name} has {w.shape[0]} outputs, expected {parts} x {d_model}")
        return list(w.split(d_model)), list(b.split(d_model))

    layer = 0
    while model.has(f"decoder/layer_{layer}/ffn/linear_0/weight"):
        src, dst = f"decoder/layer_{layer}", f"layers.{layer}"
        (q_w, k_w, v_w), (q_b, _k_b, v_b) = split(f"{src}/self_attention/linear_0", 3)
        (ck_w, cv_w), (_ck_b, cv_b) = split(f"{src}/attention/linear_1", 2)
        sd |= {
            f"{dst}.self_attn.q_proj.weight": q_w, f"{dst}.self_attn.q_proj.bias": q_b,
            f"{dst}.self_attn.k_proj.weight": k_w,
            f"{dst}.self_attn.v_proj.weight": v_w, f"{dst}.self_attn.v_proj.bias": v_b,
            f"{dst}.self_attn.out_proj.weight": get(f"{src}/self_attention/linear_1/weight", dtype),
            f"{dst}.self_attn.out_proj.bias": get(f"{src}/self_attention/linear_1/bias", dtype),
            f"{dst}.self_attn_layer_norm.weight": get(f"{src}/self_attention/layer_norm/gamma", dtype),
            f"{dst}.self_attn_layer_norm.bias": get(f"{src}/self_attention/layer_norm/beta", dtype),
            f"{dst}.encoder_attn.q_proj.weight": get(f"{src}/attention/linear_0/weight", dtype),
            f"{dst}.encoder_attn.q_proj.bias": get(f"{src}/attention/linear_0/bias", dtype),
            f"{dst}.encoder_attn.k_proj.weight": ck_w,
            f"{dst}.encoder_attn.v_proj.weight": cv_w, f"{dst}.encoder_attn.v_proj.bias": cv_b,
            f"{dst}.encoder_attn.out_proj.weight": get(f"{src}/attention/linear_2/weight", dtype),
            f"{dst}.encoder_attn.out_proj.bias": get(f"{src}/attention/linear_2/bias", dtype),
            f"{dst}.encoder_attn_layer_norm.weight": get(f"{src}/attention/layer_norm/gamma", dtype),
            f"{dst}.encoder_attn_layer_norm.bias": get(f"{src}/attention/layer_norm/beta", dtype),
            f"{dst}.fc1.weight": get(f"{src}/ffn/linear_0/weight", dtype),
            f"{dst}.fc1.bias": get(f"{src}/ffn/linear_0/bias", dtype),
            f"{dst}.fc2.weight": get(f"{src}/ffn/linear_1/weight", dtype),
            f"{dst}.fc2.bias": get(f"{src}/ffn/linear_1/bias", dtype),
            f"{dst}.final_layer_norm.weight": get(f"{src}/ffn/layer_norm/gamma", dtype),
            f"{dst}.final_layer_norm.bias": get(f"{src}/ffn/layer_norm/beta", dtype),
        }
        layer += 1
    if layer == 0:
        raise CT2FormatError(f"{model.path}: no decoder layers; the cascade needs the whole Whisper model")
    return {k: v.contiguous() for k, v in sd.items()}


def convert_ct2_whisper_asr(model_dir: str | Path, out_dir: str | Path) -> Path:
    """Write a transformers `WhisperForConditionalGeneration` folder (and the model's tokenizer.json) from a
    CTranslate2 Whisper model folder."""
    from transformers import WhisperForConditionalGeneration

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    ct2 = read_ct2_model(model_dir / "model.bin")
    config_path = model_dir / "config.json"
    ct2_config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    config = whisper_config_from_ct2(ct2, ct2_config)
    config.architectures = ["WhisperForConditionalGeneration"]
    model = WhisperForConditionalGeneration(config)
    state = {f"model.encoder.{k}": v for k, v in whisper_encoder_state_dict(ct2).items()}
    state |= {f"model.decoder.{k}": v for k, v in whisper_decoder_state_dict(ct2).items()}
    state["proj_out.weight"] = state["model.decoder.embed_tokens.weight"]
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("k_proj.bias")]
    if missing or result.unexpected_keys:
        raise CT2FormatError(f"{model_dir}: converted model does not fit: missing {missing}, "
                             f"unexpected {result.unexpected_keys}")
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    if not (model_dir / TOKENIZER).is_file():
        raise CT2FormatError(f"{model_dir}: no {TOKENIZER}; the transcripts cannot be decoded")
    shutil.copyfile(model_dir / TOKENIZER, out_dir / TOKENIZER)
    log.info("converted the whole Whisper model of %s into %s", model_dir, out_dir)
    return out_dir


class WhisperTranscriber:
    """Greedy English transcription with a converted Whisper folder (`whisper-tiny.en-asr` in the catalogue)."""

    def __init__(self, folder: str | Path, max_tokens: int = 96) -> None:
        from tokenizers import Tokenizer
        from transformers import WhisperForConditionalGeneration

        folder = Path(folder)
        self.model = WhisperForConditionalGeneration.from_pretrained(folder).eval()
        self.tokenizer = Tokenizer.from_file(str(folder / TOKENIZER))
        config = self.model.config
        self.eot = int(config.eos_token_id)
        self.prompt = [int(config.decoder_start_token_id), self._token("<|notimestamps|>")]
        self.suppress = torch.tensor(sorted(set(config.suppress_tokens or [])), dtype=torch.long)
        self.suppress_begin = torch.tensor(sorted(set(config.begin_suppress_tokens or [])), dtype=torch.long)
        self.max_tokens = max_tokens
        self.mel_cfg = AudioConfig(sample_rate=16000, max_seconds=30.0, n_mels=int(config.num_mel_bins))
        positions = int(config.max_source_positions)
        self.window = positions * 2 * hop_samples(self.mel_cfg)  # 30 s at 16 kHz

    def _token(self, text: str) -> int:
        token = self.tokenizer.token_to_id(text)
        if token is None:
            raise ValueError(f"the Whisper tokenizer has no {text!r}")
        return int(token)

    @torch.inference_mode()
    def transcribe(self, wave: np.ndarray, sample_rate: int) -> str:
        """The transcript of a mono clip (any rate; resampled to 16 kHz), its 30 s windows decoded one by one."""
        wave = np.asarray(wave, dtype=np.float32)
        if sample_rate != self.mel_cfg.sample_rate:
            import torchaudio.functional as AF

            wave = AF.resample(torch.from_numpy(wave), sample_rate, self.mel_cfg.sample_rate).numpy()
        texts = []
        for start in range(0, max(1, len(wave)), self.window):
            window = wave[start : start + self.window]
            mel = log_mel(np.pad(window, (0, self.window - len(window))), self.mel_cfg)
            texts.append(self._decode(torch.from_numpy(mel)[None]))
        return " ".join(t for t in texts if t).strip()

    def _decode(self, mel: torch.Tensor) -> str:
        encoder_out = self.model.model.encoder(mel)
        tokens = list(self.prompt)
        past: Any = None
        generated: list[int] = []
        for step in range(self.max_tokens):
            ids = torch.tensor([tokens if past is None else tokens[-1:]])
            out = self.model(encoder_outputs=encoder_out, decoder_input_ids=ids, past_key_values=past, use_cache=True)
            past = out.past_key_values
            logits = out.logits[0, -1].clone()
            logits[self.suppress] = -torch.inf
            if step == 0:
                logits[self.suppress_begin] = -torch.inf
            token = int(logits.argmax())
            if token == self.eot:
                break
            tokens.append(token)
            generated.append(token)
        return self.tokenizer.decode(generated, skip_special_tokens=True).strip()

    def transcribe_all(self, waves: list[np.ndarray], sample_rate: int) -> list[str]:
        from tqdm import tqdm

        return [self.transcribe(w, sample_rate) for w in tqdm(waves, desc="transcribe", unit="clip", disable=None)]
