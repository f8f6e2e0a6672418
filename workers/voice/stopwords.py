"""Offline stop-word (keyword) spotting with PocketSphinx's keyphrase search.

PocketSphinx (PyPI ``pocketsphinx``) ships a US English acoustic model and CMUdict. The
detector writes a two-file model for the session: a dictionary holding only the stop words'
pronunciations (so a decoder starts in ~15 ms instead of ~120 ms for the whole CMUdict) and
a keyword list with one threshold per phrase. It is fed 16 kHz audio continuously and
reports each hit with the sample where the phrase ended.

Thresholds. A keyphrase fires when its path scores within ``threshold`` of the best
phone-loop path; longer phrases accumulate more score difference, so the threshold scales
with the phrase's length: ``KWS_THRESHOLD_PER_PHONE ** phones``. With 1e-5 per phone,
"computer" (8 phones: K AH M P Y UW T ER) gets 1e-40. Measured on espeak-ng's en-us voice
(noise floors of -60..-50 dBFS, 0.3 or 1 s lead-in, alone or after another sentence; 13
conditions), as the loosest threshold at which each still fires: "computer" alone, first
in a sentence or inside one: 1e-16..1e-34 (most 1e-20..1e-26); six unrelated sentences and
white noise at -40 and -30 dBFS: never, even at 1e-50; "commuter": 1e-42..1e-50. 1e-40 sits
between, and the handler-level sweep (6 noise seeds x 4 lead-ins up to 23 s x 16/48 kHz)
gives 48/48 hits for "computer" sentences, 0/48 for the others. Near-misses: "can you
compute this" fires (1e-24..1e-34: "compute th-" is acoustically "computer"), and espeak's
female en-us+f2 voice at 150 wpm needs 1e-32..1e-44, so some of its "computer"s are missed;
pick stop words unlike common words, as the seed's notes advise, and set
``StopWordOptions.threshold`` for a looser or stricter search.

Digital silence (exact zeros from a muted or synthetic source) yields degenerate cepstra
and wrecks recognition, so the detector adds a fixed -60 dBFS dither to what it hears.

Cepstral mean. The search normalises features by a running cepstral mean. Over a long
silence that mean settles on the noise floor, and afterwards speech no longer matches the
model (test-found: "computer" after 30 s of silence went unheard). So the search restarts
every ``KWS_SEARCH_WINDOW_S`` from the model's prior mean, first replaying the last
``KWS_RESTART_OVERLAP_S`` of audio, so a phrase spanning the restart is still heard.
Feeding the search only speech segments (PocketSphinx's Endpointer) was tried instead: the
phrase then needed 1e-50, where the continuous search fires at 1e-30..1e-40 (the search
starts cold on the first phone, with no background before it).
"""

from __future__ import annotations

import functools
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from workers.audio import INT16_SCALE

KWS_SAMPLE_RATE = 16_000  # Hz: the acoustic model's rate
KWS_FRAME_SAMPLES = 160  # samples per recogniser frame (10 ms at 16 kHz)
KWS_THRESHOLD_PER_PHONE = 1e-5  # keyphrase threshold = this ** (phones in the phrase); see above
KWS_DITHER_RMS = 32.0  # int16 units (-60 dBFS) of noise added so digital silence stays speech-like
KWS_SEARCH_WINDOW_S = 8.0  # s: the search restarts this often, from the model's prior cepstral mean
KWS_RESTART_OVERLAP_S = 1.5  # s of recent audio replayed into a restarted search (> the longest phrase)
KWS_DITHER_SEED = 0x5EED  # fixed, so a detector's behaviour is reproducible
KWS_CMN = "live"  # cepstral mean adapts as the stream goes

_WORD_RE = re.compile(r"[a-z']+")


@dataclass
class StopWordOptions:
    """threshold: one keyphrase threshold for every stop word, or None to scale
    ``threshold_per_phone`` with each phrase's length."""

    threshold: float | None = None
    threshold_per_phone: float = KWS_THRESHOLD_PER_PHONE


def _model_dir() -> str:
    import pocketsphinx

    return os.path.join(pocketsphinx.get_model_path(), "en-us")


@functools.lru_cache(maxsize=1)
def _dictionary_path() -> str:
    return os.path.join(_model_dir(), "cmudict-en-us.dict")


@functools.lru_cache(maxsize=256)
def _pronunciations(word: str) -> tuple[str, ...]:
    """CMUdict lines (``word PH ON ES``, alternates as ``word(2) ...``) for one word."""
    prefix = (word + " ", word + "(")
    with open(_dictionary_path(), encoding="utf-8") as f:
        return tuple(line.rstrip("\n") for line in f if line.startswith(prefix))


def normalise_phrase(phrase: str) -> str:
    words = _WORD_RE.findall(phrase.lower())
    if not words:
        raise ValueError(f"stop word {phrase!r} has no letters")
    return " ".join(words)


def check_stop_words(stop_words: Iterable[str]) -> list[str]:
    """Normalised phrases; raises ValueError naming any word CMUdict does not know."""
    phrases = [normalise_phrase(p) for p in stop_words]
    if not phrases:
        raise ValueError("ReplyOnStopWords needs at least one stop word")
    unknown = sorted({w for p in phrases for w in p.split() if not _pronunciations(w)})
    if unknown:
        raise ValueError(
            f"stop word(s) {unknown} are not in the PocketSphinx English dictionary; "
            "use dictionary words (the seed's advice: two distinct words like 'ok computer')"
        )
    return list(dict.fromkeys(phrases))


def phrase_phones(phrase: str) -> int:
    """Phones in the phrase's first pronunciation."""
    return sum(len(_pronunciations(w)[0].split()) - 1 for w in phrase.split())


def phrase_threshold(phrase: str, options: StopWordOptions) -> float:
    if options.threshold is not None:
        return options.threshold
    return options.threshold_per_phone ** phrase_phones(phrase)


@dataclass
class StopWordHit:
    phrase: str
    end_sample: int  # absolute 16 kHz sample index just after the phrase


class StopWordDetector:
    """Continuous keyphrase search over a 16 kHz stream. One per stream; not thread-safe."""

    def __init__(self, stop_words: Sequence[str], options: StopWordOptions | None = None) -> None:
        self.phrases = check_stop_words(stop_words)
        self.options = options or StopWordOptions()
        self._decoder: Any = None
        self._rng = np.random.default_rng(KWS_DITHER_SEED)
        self._pos = 0  # absolute samples fed
        self._utt_start = 0  # absolute sample where the current search began
        self._recent = np.zeros(0, dtype=np.int16)  # last KWS_RESTART_OVERLAP_S of dithered audio
        self._no_replay_before = 0  # absolute sample; audio before it never re-enters a search
        self._overlap = int(KWS_RESTART_OVERLAP_S * KWS_SAMPLE_RATE)  # samples
        self._cmn_prior = ""

    def load(self) -> None:
        """Build the decoder (~15 ms); called on first use if not before."""
        if self._decoder is not None:
            return
        import pocketsphinx

        lines = [line for p in self.phrases for w in p.split() for line in _pronunciations(w)]
        keywords = [f"{p} /{phrase_threshold(p, self.options):.3e}/" for p in self.phrases]
        with tempfile.TemporaryDirectory(prefix="rtcpool-kws-") as tmp:
            dict_path = os.path.join(tmp, "words.dict")
            kws_path = os.path.join(tmp, "words.kws")
            with open(dict_path, "w", encoding="utf-8") as f:
                f.write("\n".join(dict.fromkeys(lines)) + "\n")
            with open(kws_path, "w", encoding="utf-8") as f:
                f.write("\n".join(keywords) + "\n")
            self._decoder = pocketsphinx.Decoder(
                hmm=os.path.join(_model_dir(), "en-us"), dict=dict_path, kws=kws_path, cmn=KWS_CMN, loglevel="FATAL"
            )
        self._cmn_prior = self._decoder.get_cmn()
        self._decoder.start_utt()
        self._utt_start = self._pos

    def process(self, audio: np.ndarray, position: int | None = None) -> StopWordHit | None:
        """Feed mono float32 [-1, 1) samples at 16 kHz; returns the first phrase heard, if any.

        ``position`` is the absolute stream index of ``audio[0]``; when it is not where the
        last call ended (the caller stopped listening for a while), the search restarts
        there. After a hit the search restarts right after the phrase, so a phrase fires once.
        """
        self.load()
        dec = self._decoder
        assert dec is not None
        if position is not None and position != self._pos:
            self._pos = position
            self._recent = self._recent[:0]
            self._no_replay_before = position
            self._restart(replay_from=None)
        pcm = audio.astype(np.float32) * np.float32(INT16_SCALE)
        pcm += self._rng.standard_normal(pcm.size).astype(np.float32) * np.float32(KWS_DITHER_RMS)
        pcm16 = np.clip(np.rint(pcm), -INT16_SCALE, INT16_SCALE - 1).astype(np.int16)
        dec.process_raw(pcm16.tobytes(), False, False)
        self._pos += pcm16.size
        self._recent = np.concatenate((self._recent, pcm16))[-self._overlap :]
        hyp = dec.hyp()
        if hyp is not None and hyp.hypstr:
            fed = self._pos - self._utt_start
            end_frame = max((s.end_frame for s in dec.seg()), default=fed // KWS_FRAME_SAMPLES - 1)
            end = min(self._pos, self._utt_start + (end_frame + 1) * KWS_FRAME_SAMPLES)
            self._restart(replay_from=end)
            return StopWordHit(hyp.hypstr.strip(), end)
        if self._pos - self._utt_start >= KWS_SEARCH_WINDOW_S * KWS_SAMPLE_RATE:
            self._restart(replay_from=self._pos - self._overlap)
        return None

    def _restart(self, replay_from: int | None) -> None:
        """A new search from the current position, first replaying the recent audio from
        ``replay_from`` (absolute; never before the last hit), so a phrase straddling the
        restart is still heard."""
        dec = self._decoder
        assert dec is not None
        dec.end_utt()
        dec.set_cmn(self._cmn_prior)
        dec.start_utt()
        self._utt_start = self._pos
        if replay_from is None:
            return
        self._no_replay_before = max(self._no_replay_before, replay_from)
        start = max(self._no_replay_before, self._pos - self._recent.size)
        if start < self._pos:
            tail = self._recent[self._recent.size - (self._pos - start) :]
            dec.process_raw(tail.tobytes(), False, False)
            self._utt_start = start

    def close(self) -> None:
        if self._decoder is not None:
            try:
                self._decoder.end_utt()
            except Exception:
                pass
            self._decoder = None


__all__ = [
    "KWS_THRESHOLD_PER_PHONE",
    "StopWordDetector",
    "StopWordHit",
    "StopWordOptions",
    "check_stop_words",
    "phrase_phones",
    "phrase_threshold",
]
