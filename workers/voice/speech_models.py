"""Built-in speech-to-text and text-to-speech, with fastrtc's names and call shapes.

* ``get_stt_model()`` → :class:`PocketSphinxSTT`: ``.stt((sample_rate, array)) -> str``.
  PocketSphinx's wheel ships the US English acoustic model, the language model and CMUdict,
  so nothing is downloaded at run time. The whole utterance is decoded at once (the fwdtree,
  fwdflat and bestpath passes at their defaults: faster beams cost most of the accuracy).
* ``get_tts_model()`` → :class:`EspeakTTSModel`: ``.tts(text) -> (sample_rate, float32)``,
  ``stream_tts`` (async) and ``stream_tts_sync``, one chunk per sentence. espeak-ng's library
  and voice data come in the ``espeakng-loader`` wheel and are called through ctypes; the
  system's ``libespeak-ng`` (``apt-get install espeak-ng``) is the fallback.

fastrtc's other models (Moonshine, Kokoro) load their weights from a model hub on first use;
rtcpool downloads nothing at run time (a worker must start the same way offline, and a pool
of workers must not fetch a model each), so asking for one is an error that names the
bundled alternative. Cartesia is a cloud service: call its SDK from the handler.

Models are cached per process: every worker loads its own on first use. A model object
pickles as its name, so a handler that closes over one reaches a worker by value and is
given that worker's own model there, loaded as it arrives (before the session's first audio).

Measured with espeak-ng's en-us voice at 175 wpm, 15 everyday sentences, decoded on this
2-core machine: PocketSphinx recovers ~75% of the words at 0.4-0.45 s per second of audio
(so a 2 s utterance costs ~0.9 s; "maxhmmpf" 3000 gave 0.27 s/s at 74%, beams of 1e-30
0.11 s/s but only 21%); the decoder takes ~0.45 s and ~90 MB to load. At 8 kHz (a phone's
band) recall drops to ~45%: the acoustic model is wideband. espeak-ng synthesises at ~0.002
s per second of speech and loads in ~1 ms.

Why the decoder's input is padded and dithered: exact digital zeros (espeak's and any
synthetic source's silence) give degenerate cepstra, and speech that starts on the first
frame leaves the cepstral mean nothing to settle on. Measured on the same 15 sentences:
neither, 30% of words; -60 dBFS dither alone, 67%; dither and 0.3 s of lead-in/out, 77-83%.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import re
import threading
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from workers.audio import INT16_SCALE, float32_to_int16, int16_to_float32, resample

STT_SAMPLE_RATE = 16_000  # Hz: PocketSphinx's en-us acoustic model
STT_PAD_S = 0.3  # s of dither added before and after an utterance (see the module docstring)
STT_DITHER_RMS = 32.0  # int16 units (-60 dBFS) of noise under the input, as in workers/voice/stopwords.py
STT_DITHER_SEED = 0x5EED  # fixed: the same audio always decodes to the same text
STT_LOG_LEVEL = "FATAL"  # PocketSphinx logs every utterance at INFO to stderr otherwise

ESPEAK_VOICE = "en-us"  # PocketSphinx's model is US English too: the round trip works best
ESPEAK_SPEED_WPM = 175  # words per minute: espeak-ng's default
ESPEAK_PITCH = 50  # 0..100: espeak-ng's default
ESPEAK_SPEED_RANGE_WPM = (80, 450)  # what espeak-ng accepts
ESPEAK_PITCH_RANGE = (0, 100)
ESPEAK_BUFFER_MS = 0  # the synthesis callback's buffer: 0 is espeak-ng's default (60 ms)

STT_MODELS = ("pocketsphinx",)
TTS_MODELS = ("espeak",)
_STT_ALIASES = {"pocketsphinx": "pocketsphinx", "pocketsphinx/en-us": "pocketsphinx"}
_TTS_ALIASES = {"espeak": "espeak", "espeak-ng": "espeak"}
_NOT_BUNDLED = {
    "moonshine/base": "stt",
    "moonshine/tiny": "stt",
    "moonshine": "stt",
    "kokoro": "tts",
}
_CLOUD = {"cartesia": "tts"}

# espeak-ng's C API (speak_lib.h), the few values used here
_AUDIO_OUTPUT_SYNCHRONOUS = 2  # espeak_Synth returns when done, samples via the callback
_INITIALIZE_DONT_EXIT = 0x8000  # a missing data file is an error code, not exit() of the process
_CHARS_UTF8 = 1
_ENDPAUSE = 0x1000  # a sentence's pause after the text
_POS_CHARACTER = 1
_PARAM_RATE = 1
_PARAM_PITCH = 3
_EE_OK = 0

# sentence ends: . ! ? … (and closing quotes or brackets after them) before a space, or a
# line break (an LLM's list items)
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?…])[\"'”’)\]]*\s+|\s*\n\s*")
_FILLER = re.compile(r"^(<.*>|\[.*\])$")  # <s>, </s>, <sil>, [NOISE]
_ALTERNATE = re.compile(r"\(\d+\)$")  # CMUdict's alternate pronunciations: read(2)


class STTModel(Protocol):
    def stt(self, audio: tuple[int, np.ndarray]) -> str: ...


class TTSModel(Protocol):
    def tts(self, text: str, options: Any = None) -> tuple[int, np.ndarray]: ...

    def stream_tts(
        self, text: str, options: Any = None
    ) -> AsyncIterator[tuple[int, np.ndarray]]: ...

    def stream_tts_sync(
        self, text: str, options: Any = None
    ) -> Iterator[tuple[int, np.ndarray]]: ...


# --- speech to text ---------------------------------------------------------------------------


def _mono_float(array: np.ndarray) -> np.ndarray:
    """int16 or float audio shaped (N,), (1, N), (C, N) or (N, C) → 1-D float32."""
    a = np.asarray(array)
    if a.dtype == np.int16:
        x = int16_to_float32(a)
    elif np.issubdtype(a.dtype, np.floating):
        x = a.astype(np.float32, copy=False)
    else:
        raise TypeError(f"audio must be int16 or float samples, got {a.dtype}")
    if x.ndim == 1:
        return x
    if x.ndim != 2:
        raise ValueError(f"audio must be 1-D or 2-D, got shape {x.shape}")
    if x.shape[0] > x.shape[1]:  # (N, C): samples first
        x = x.T
    return x.mean(axis=0) if x.shape[0] > 1 else x[0]


class PocketSphinxSTT:
    """PocketSphinx's US English model, decoding one whole utterance per call.

    One decoder per process, loaded on first use (or :meth:`load`); calls from several
    threads take turns on it.
    """

    model = "pocketsphinx"

    def __init__(self) -> None:
        self._decoder: Any = None
        self._lock = threading.Lock()

    def load(self) -> PocketSphinxSTT:
        with self._lock:
            if self._decoder is None:
                import pocketsphinx

                # the wheel's default model: en-us acoustic model, en-us.lm.bin, CMUdict
                self._decoder = pocketsphinx.Decoder(loglevel=STT_LOG_LEVEL)
        return self

    @property
    def loaded(self) -> bool:
        return self._decoder is not None

    def stt(self, audio: tuple[int, np.ndarray]) -> str:
        """The words spoken in ``(sample_rate, samples)``, lowercase, separated by spaces."""
        sample_rate, samples = audio
        if sample_rate <= 0:
            raise ValueError(f"sample rate must be positive, got {sample_rate}")
        x = _mono_float(samples)
        if x.size == 0:
            return ""
        if sample_rate != STT_SAMPLE_RATE:
            x = resample(x, int(sample_rate), STT_SAMPLE_RATE)
        pad = np.zeros(int(STT_PAD_S * STT_SAMPLE_RATE), dtype=np.float32)
        x = np.concatenate((pad, x, pad))
        rng = np.random.default_rng(STT_DITHER_SEED)
        x += rng.standard_normal(x.size).astype(np.float32) * np.float32(
            STT_DITHER_RMS / INT16_SCALE
        )
        pcm = float32_to_int16(x)
        self.load()
        with self._lock:
            dec = self._decoder
            dec.start_utt()
            dec.process_raw(pcm.tobytes(), False, True)
            dec.end_utt()
            hyp = dec.hyp()
        if hyp is None:
            return ""
        words = (_ALTERNATE.sub("", w) for w in hyp.hypstr.split() if not _FILLER.match(w))
        return " ".join(words).lower()

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        # a decoder does not pickle, and should not travel: the receiving process loads its own
        return _loaded_stt_model, (self.model,)

    def __repr__(self) -> str:
        return f"PocketSphinxSTT(loaded={self.loaded})"


def stt_for_chunks(
    stt_model: STTModel, audio: tuple[int, np.ndarray], chunks: Sequence[Mapping[str, int]]
) -> str:
    """The text of each ``{"start", "end"}`` sample range (a VAD's speech chunks), joined.

    Slices along the last axis, so (1, N) and (C, N) arrays work as well as (N,).
    """
    sample_rate, samples = audio
    a = np.asarray(samples)
    texts = (stt_model.stt((sample_rate, a[..., c["start"] : c["end"]])) for c in chunks)
    return " ".join(t for t in texts if t)


# --- text to speech ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EspeakTTSOptions:
    """voice: an espeak-ng voice name (``en-us``, ``en-gb``, ``en-us+f2`` for a variant,
    ``de``, ...); speed_wpm: words per minute; pitch: 0..100."""

    voice: str = ESPEAK_VOICE
    speed_wpm: int = ESPEAK_SPEED_WPM
    pitch: int = ESPEAK_PITCH

    def __post_init__(self) -> None:
        lo, hi = ESPEAK_SPEED_RANGE_WPM
        if not lo <= self.speed_wpm <= hi:
            raise ValueError(f"speed_wpm must be within {lo}..{hi}, got {self.speed_wpm}")
        lo, hi = ESPEAK_PITCH_RANGE
        if not lo <= self.pitch <= hi:
            raise ValueError(f"pitch must be within {lo}..{hi}, got {self.pitch}")


_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


def _espeak_library() -> tuple[str, str | None]:
    """(library path, data path or None for the library's own default)."""
    try:
        import espeakng_loader
    except ImportError:
        pass
    else:
        return espeakng_loader.get_library_path(), espeakng_loader.get_data_path()
    found = ctypes.util.find_library("espeak-ng")
    if found:
        return found, None
    raise RuntimeError(
        "espeak-ng is not available: pip install espeakng-loader (a dependency of rtcpool: "
        "its wheel carries the library and voices), or apt-get install espeak-ng"
    )


class _Espeak:
    """The process's espeak-ng library. Its state (voice, rate, callback) is global to the
    process, so every synthesis holds one lock from setting the voice to the last sample."""

    def __init__(self) -> None:
        lib_path, data_path = _espeak_library()
        lib = ctypes.CDLL(lib_path)
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,  # text
            ctypes.c_size_t,  # its size in bytes, with the NUL
            ctypes.c_uint,  # start position
            ctypes.c_int,  # position type
            ctypes.c_uint,  # end position (0: the end)
            ctypes.c_uint,  # flags
            ctypes.c_void_p,  # unique identifier out (unused)
            ctypes.c_void_p,  # user data
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.restype = ctypes.c_int
        lib.espeak_Info.argtypes = [ctypes.c_void_p]
        lib.espeak_Info.restype = ctypes.c_char_p
        path = data_path.encode() if data_path is not None else None
        rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, ESPEAK_BUFFER_MS, path, _INITIALIZE_DONT_EXIT
        )
        if rate <= 0:
            raise RuntimeError(
                f"espeak-ng did not start ({lib_path}, data {data_path}): error {rate}"
            )
        self.lib = lib
        self.sample_rate = int(rate)
        self.version = (lib.espeak_Info(None) or b"?").decode()
        self.lock = threading.Lock()
        self._pieces: list[bytes] = []
        self._callback = _SynthCallback(self._collect)  # kept: the library holds only a pointer
        lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav: Any, n: int, _events: Any) -> int:
        if n > 0 and wav:
            self._pieces.append(ctypes.string_at(wav, n * 2))
        return 0  # 0: go on

    def synth(self, text: str, options: EspeakTTSOptions, end_pause: bool = False) -> np.ndarray:
        """int16 mono samples at :attr:`sample_rate`."""
        data = text.encode("utf-8")
        flags = _CHARS_UTF8 | (_ENDPAUSE if end_pause else 0)
        with self.lock:
            lib = self.lib
            if lib.espeak_SetVoiceByName(options.voice.encode()) != _EE_OK:
                raise ValueError(f"espeak-ng {self.version} has no voice {options.voice!r}")
            lib.espeak_SetParameter(_PARAM_RATE, options.speed_wpm, 0)
            lib.espeak_SetParameter(_PARAM_PITCH, options.pitch, 0)
            self._pieces = []
            err = lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, flags, None, None)
            if err == _EE_OK:
                err = lib.espeak_Synchronize()
            pieces, self._pieces = self._pieces, []
        if err != _EE_OK:
            raise RuntimeError(f"espeak-ng failed to synthesise {text[:40]!r}: error {err}")
        return np.frombuffer(b"".join(pieces), dtype="<i2").astype(np.int16)


_espeak: _Espeak | None = None
_espeak_lock = threading.Lock()


def _espeak_instance() -> _Espeak:
    global _espeak
    with _espeak_lock:
        if _espeak is None:
            _espeak = _Espeak()
        return _espeak


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``: split after . ! ? or … followed by a space, and at line breaks."""
    return [s for s in (p.strip() for p in _SENTENCE_SPLIT.split(text)) if s]


class EspeakTTSModel:
    """espeak-ng: a formant synthesiser, robotic but instant and small. Output is
    ``(sample_rate, float32 mono in [-1, 1])`` at espeak-ng's 22.05 kHz."""

    model = "espeak"

    def load(self) -> EspeakTTSModel:
        _espeak_instance()
        return self

    @property
    def sample_rate(self) -> int:
        return _espeak_instance().sample_rate

    def tts(self, text: str, options: EspeakTTSOptions | None = None) -> tuple[int, np.ndarray]:
        """The whole text as one array (espeak-ng's own pauses between its sentences)."""
        engine = _espeak_instance()
        opts = _options(options)
        pcm = engine.synth(text, opts) if text.strip() else np.zeros(0, dtype=np.int16)
        return engine.sample_rate, int16_to_float32(pcm)

    def stream_tts_sync(
        self, text: str, options: EspeakTTSOptions | None = None
    ) -> Iterator[tuple[int, np.ndarray]]:
        """One ``(sample_rate, float32)`` chunk per sentence, each as soon as it is made;
        every chunk but the last ends with espeak-ng's sentence pause."""
        engine = _espeak_instance()
        opts = _options(options)
        sentences = split_sentences(text)
        for i, sentence in enumerate(sentences):
            pcm = engine.synth(sentence, opts, end_pause=i < len(sentences) - 1)
            yield engine.sample_rate, int16_to_float32(pcm)

    async def stream_tts(
        self, text: str, options: EspeakTTSOptions | None = None
    ) -> AsyncIterator[tuple[int, np.ndarray]]:
        """As :meth:`stream_tts_sync`, each sentence synthesised on a thread, off the loop."""
        engine = await asyncio.to_thread(_espeak_instance)
        opts = _options(options)
        sentences = split_sentences(text)
        for i, sentence in enumerate(sentences):
            pcm = await asyncio.to_thread(engine.synth, sentence, opts, i < len(sentences) - 1)
            yield engine.sample_rate, int16_to_float32(pcm)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return get_tts_model, (self.model,)

    def __repr__(self) -> str:
        return "EspeakTTSModel()"


def _options(options: EspeakTTSOptions | None) -> EspeakTTSOptions:
    if options is None:
        return EspeakTTSOptions()
    if not isinstance(options, EspeakTTSOptions):
        raise TypeError(f"espeak takes EspeakTTSOptions, got {type(options).__name__}")
    return options


# --- the factories ----------------------------------------------------------------------------

_models: dict[str, Any] = {}
_models_lock = threading.Lock()


def _canonical(model: str, kind: str, aliases: dict[str, str], available: tuple[str, ...]) -> str:
    name = model.strip().lower()
    if name in aliases:
        return aliases[name]
    alternative = available[0]
    if _NOT_BUNDLED.get(name) == kind:
        raise ValueError(
            f"{kind.upper()} model {model!r} is not bundled with rtcpool: fastrtc downloads its "
            f"weights from a model hub on first use, and rtcpool's workers download nothing at "
            f"run time. Use {alternative!r} (get_{kind}_model({alternative!r})), or load that "
            f"model yourself inside your handler from a local file"
        )
    if _CLOUD.get(name) == kind:
        raise ValueError(
            f"{kind.upper()} model {model!r} is a cloud service, not a bundled model: call its "
            f"SDK from your handler (it needs an API key), or use {alternative!r}"
        )
    other = (
        _NOT_BUNDLED.get(name)
        or _CLOUD.get(name)
        or ("stt" if name in _STT_ALIASES else "tts" if name in _TTS_ALIASES else None)
    )
    if other is not None:  # a model of the other kind, asked of the wrong factory
        what = {"stt": "a speech-to-text", "tts": "a text-to-speech"}[other]
        raise ValueError(
            f"{model!r} is {what} model (get_{other}_model); {kind.upper()} models: {', '.join(available)}"
        )
    raise ValueError(f"unknown {kind.upper()} model {model!r}; available: {', '.join(available)}")


def _cached(key: str, factory: Any) -> Any:
    with _models_lock:
        if key not in _models:
            _models[key] = factory()
        return _models[key]


def get_stt_model(model: str = "pocketsphinx") -> PocketSphinxSTT:
    """This process's speech-to-text model. Loads lazily, except in a worker importing the
    app (rtcpool's re-import path), where it loads at once so the first reply does not wait."""
    name = _canonical(model, "stt", _STT_ALIASES, STT_MODELS)
    m: PocketSphinxSTT = _cached(f"stt:{name}", PocketSphinxSTT)
    from workers.process.loader import in_worker_import

    if in_worker_import():
        m.load()
    return m


def _loaded_stt_model(model: str) -> PocketSphinxSTT:
    """What an unpickled STT model becomes: this process's own, loaded."""
    return get_stt_model(model).load()


def get_tts_model(model: str = "espeak") -> EspeakTTSModel:
    """This process's text-to-speech model (espeak-ng starts in ~1 ms, on first use)."""
    name = _canonical(model, "tts", _TTS_ALIASES, TTS_MODELS)
    m: EspeakTTSModel = _cached(f"tts:{name}", EspeakTTSModel)
    return m


__all__ = [
    "ESPEAK_PITCH",
    "ESPEAK_SPEED_WPM",
    "ESPEAK_VOICE",
    "EspeakTTSModel",
    "EspeakTTSOptions",
    "PocketSphinxSTT",
    "STTModel",
    "STT_MODELS",
    "STT_SAMPLE_RATE",
    "TTSModel",
    "TTS_MODELS",
    "get_stt_model",
    "get_tts_model",
    "split_sentences",
    "stt_for_chunks",
]
