"""Speech for the world's captions: eSpeak NG through ctypes, the library and voices from `espeakng-loader`.

eSpeak keeps global state, so each process initialises it once (`Speaker` is a per-process singleton).
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass
from math import gcd

import numpy as np

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_ESPEAK_CHARS_UTF8 = 1
_RATE, _PITCH, _RANGE = 1, 3, 4

VOICE_VARIANTS = ("m1", "m2", "m3", "m4", "m7", "f1", "f2", "f3", "f4", "klatt", "klatt2")
LANGUAGES = ("en", "en-us", "en-gb-scotland", "en-gb-x-rp")


@dataclass(frozen=True)
class Voice:
    language: str = "en-us"
    variant: str = "m1"
    rate: int = 170  # words per minute
    pitch: int = 50  # 0-100
    pitch_range: int = 50  # 0-100

    @property
    def name(self) -> str:
        return f"{self.language}+{self.variant}"


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class Speaker:
    _instance: Speaker | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        import espeakng_loader

        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        data_dir = espeakng_loader.get_data_path().encode()
        self._lib.espeak_Initialize.restype = ctypes.c_int
        # eSpeak's path argument is the folder that holds espeak-ng-data.
        parent = data_dir.rsplit(b"/", 1)[0]
        rate = self._lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, ctypes.c_char_p(parent), 0)
        if rate <= 0:
            raise RuntimeError(f"eSpeak NG failed to initialise with data at {data_dir.decode()}")
        self.sample_rate = int(rate)
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # keep a reference: ctypes does not
        self._lib.espeak_SetSynthCallback(self._callback)

    @classmethod
    def get(cls) -> Speaker:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def _collect(self, wav, n, _events) -> int:  # noqa: ANN001 - ctypes callback
        if n > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    def say(self, text: str, voice: Voice) -> np.ndarray:
        """Synthesise `text`; float32 mono samples in [-1, 1] at `self.sample_rate`."""
        with self._lock:
            if self._lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
                raise ValueError(f"eSpeak NG has no voice {voice.name!r}")
            for parameter, value in ((_RATE, voice.rate), (_PITCH, voice.pitch), (_RANGE, voice.pitch_range)):
                self._lib.espeak_SetParameter(parameter, value, 0)
            # eSpeak's noise generator carries over between utterances: reseed it so that each one depends on
            # its own text and voice only, whatever this process said before
            self._lib.espeak_ng_SetRandSeed(ctypes.c_long(0))
            self._chunks = []
            data = text.encode() + b"\0"
            err = self._lib.espeak_Synth(
                ctypes.c_char_p(data), len(data), 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None
            )
            if err != 0:
                raise RuntimeError(f"eSpeak NG failed (error {err}) on {text!r}")
            self._lib.espeak_Synchronize()
            chunks, self._chunks = self._chunks, []
        if not chunks:
            raise RuntimeError(f"eSpeak NG produced no audio for {text!r}")
        return np.concatenate(chunks).astype(np.float32) / 32768.0


def resample(audio: np.ndarray, from_rate: int, to_rate: int, half_width: int = 16, beta: float = 8.0) -> np.ndarray:
    """Band-limited polyphase resampling by a Kaiser-windowed sinc, in numpy (scipy.signal costs a second to import in
    every worker process)."""
    g = gcd(from_rate, to_rate)
    up, down = to_rate // g, from_rate // g
    n_out = len(audio) * up // down
    cutoff = min(1.0, up / down)
    offsets = np.arange(-half_width + 1, half_width + 1)
    distance = (np.arange(up) / up)[:, None] - offsets[None, :]  # one row of taps per output phase
    window = np.i0(beta * np.sqrt(np.clip(1 - (distance / half_width) ** 2, 0, None))) / np.i0(beta)
    table = cutoff * np.sinc(cutoff * distance) * window
    numerators = np.arange(n_out) * down
    taps = (numerators // up)[:, None] + offsets[None, :]
    padded = np.concatenate([np.zeros(half_width), audio, np.zeros(half_width + 1)])
    return (padded[taps + half_width] * table[numerators % up]).sum(axis=1).astype(np.float32)


def speak(text: str, voice: Voice, sample_rate: int) -> np.ndarray:
    """`text` spoken by `voice`, resampled to `sample_rate`."""
    speaker = Speaker.get()
    audio = speaker.say(text, voice)
    if speaker.sample_rate != sample_rate:
        audio = resample(audio, speaker.sample_rate, sample_rate)
    return np.clip(audio, -1.0, 1.0)
