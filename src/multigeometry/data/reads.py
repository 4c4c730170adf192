"""What the configured model reads from a sample, decided once from params: both dataset classes skip decoding raw
images, log-mels and clips' frames that no encoder reads (an encoder with `input: emb` reads only the shards'
`<modality>.emb`), and the collator tokenises text only when a text or code encoder reads tokens (`input: raw`)."""

from __future__ import annotations

from multigeometry.config import Params

# modality -> the decoded field its raw encoder reads
RAW_FIELDS = {"image": "image", "audio": "audio.feat", "video": "video"}
ALL_RAW_FIELDS = frozenset(RAW_FIELDS.values())


def paired_modalities(params: Params) -> set[str]:
    return {m for p in params.pairs.pairs for m in (p.a, p.b)}


def needs_tokens(params: Params) -> bool:
    """Whether a configured pair feeds raw text or code, which the loader then tokenises."""
    return any(getattr(params.model, m).input == "raw" for m in paired_modalities(params) & {"text", "code"})


def unread_fields(params: Params) -> frozenset[str]:
    """Decoded fields that no encoder of the configured pairs reads (raw images, log-mels, clips' frames)."""
    used = paired_modalities(params)
    return frozenset(
        field for modality, field in RAW_FIELDS.items()
        if modality not in used or getattr(params.model, modality).input == "emb"
    )
