"""The temporal term (`loss.temporal_weight`): hard negatives that only time order tells apart, so that a temporal
encoder learns to use the order of a clip's frames (the contrastive pairs alone rarely set a clip against its own
reversal). On the batch's rows with a clip, a caption and temporal contrasts (`models.temporal.checked_rows`):

- the caption against its clip, the clip played backwards and its frames shuffled (cross-entropy, its clip first);
- the clip against its caption and the captions of its opposite motion (cross-entropy, its caption first).

Logits are the criterion's similarity times its logit scale, as in the pair losses; the term is their mean.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from multigeometry.data.batch import Batch
from multigeometry.geometry.distribution import select_rows
from multigeometry.models.temporal import checked_rows, encoded_time_variants


def temporal_term(model: Any, criterion: Any, batch: Batch) -> Tensor | None:
    """The mean of both cross-entropies over the batch's checked rows; None where the batch has none or the model no
    video and text encoders."""
    if not {"video", "text"} <= set(model.encoders):
        return None
    checked = checked_rows(batch)
    contrasts = model.encode_texts(batch.temporal_contrasts) if checked is not None else None
    if checked is None or contrasts is None:
        return None
    keep, entries, owner = checked
    scale = criterion.logit_scale()
    device = scale.device
    keep, entries, owner = keep.to(device), entries.to(device), owner.to(device)
    captions = select_rows(model.encode(batch.inputs, "text"), keep)
    clips = [select_rows(c, keep) for c in encoded_time_variants(model, batch.inputs)]
    to_clips = torch.stack([criterion.similarity(captions, c).diagonal() for c in clips], 1)
    target = torch.zeros(len(keep), dtype=torch.long, device=device)
    text_to_video = F.cross_entropy(scale * to_clips, target)
    own = to_clips[:, 0]
    against = criterion.similarity(select_rows(contrasts, entries), clips[0]).gather(1, owner[:, None]).squeeze(1)
    width = 1 + int(torch.bincount(owner, minlength=len(keep)).max())
    logits = torch.full((len(keep), width), -torch.inf, device=device, dtype=own.dtype)
    logits[:, 0] = own
    # each contrast's place among its row's (the entries come row by row): its index less its row's first one
    rank = torch.arange(len(owner), device=device) - torch.searchsorted(owner, owner)
    logits[owner, 1 + rank] = against
    video_to_text = F.cross_entropy(scale * logits, target)
    return (text_to_video + video_to_text) / 2
