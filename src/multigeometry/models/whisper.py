"""Whisper's encoder on log-mel input shorter than its 30 s window."""

from __future__ import annotations

from typing import Any

import torch


def whisper_encoder_states(encoder: Any, input_features: torch.Tensor, upto: int) -> torch.Tensor:
    """Hidden state number ``upto`` of a transformers `WhisperEncoder` for log-mel input of any length <= 30 s.

    The numbering is transformers': 0 = the embeddings (convolutions + positions), i = the output of layer i, and
    the last (= number of layers) = the final layer norm's output, i.e. ``last_hidden_state``. The positional
    embeddings are sliced to the number of frames after the stride-2 convolution, instead of requiring Whisper's
    3000 input frames. Layers past ``upto`` are not run.
    """
    n_layers = len(encoder.layers)
    if not 0 <= upto <= n_layers:
        raise ValueError(f"whisper_encoder_states: upto={upto} outside 0..{n_layers}")
    positions = encoder.embed_positions.weight
    conv_stride = encoder.conv1.stride[0] * encoder.conv2.stride[0]
    if input_features.shape[-1] > positions.shape[0] * conv_stride:
        raise ValueError(
            f"whisper_encoder_states: {input_features.shape[-1]} frames exceed the encoder's "
            f"{positions.shape[0] * conv_stride}; split the input into windows"
        )
    hidden = torch.nn.functional.gelu(encoder.conv1(input_features))
    hidden = torch.nn.functional.gelu(encoder.conv2(hidden)).permute(0, 2, 1)
    hidden = hidden + positions[: hidden.shape[1]].to(hidden.dtype)
    for layer in encoder.layers[:upto]:
        out = layer(hidden, None)
        hidden = out[0] if isinstance(out, tuple) else out
    if upto == n_layers:
        hidden = encoder.layer_norm(hidden)
    return hidden
