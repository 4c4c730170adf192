"""Speech for the world's captions: eSpeak NG through ctypes, the library and voices from `espeakng-loader`.

eSpeak keeps global state, so each process initialises it once (`Speaker` is a per-process singleton).
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass

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


def speak(text: str, voice: Voice, sample_rate: int) -> np.ndarray:
    """`text` spoken by `voice`, resampled to `sample_rate`."""
    from math import gcd

    from scipy.signal import resample_poly

    speaker = Speaker.get()
    audio = speaker.say(text, voice)
    if speaker.sample_rate != sample_rate:
        g = gcd(speaker.sample_rate, sample_rate)
        audio = resample_poly(audio, sample_rate // g, speaker.sample_rate // g).astype(np.float32)
    return np.clip(audio, -1.0, 1.0)
