"""Speech input: audio read, resampled and transcribed offline into the text a text task reads; the artifact
records the recogniser and the Predictor transcribes spoken inputs the same way; bad audio names the record."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import tunelab
from tunelab.data import read_records
from tunelab.speech import SAMPLE_RATE, Transcriber, read_audio, register_recognizer, resolve_recognizer

from conftest import sentiment_rows, tiny_config

soundfile = pytest.importorskip("soundfile")
DATA = Path(__file__).parent / "data" / "speech"


def tone(path: Path, index: int, rate: int = 8000, seconds: float = 0.3, channels: int = 1) -> Path:
    """A sine at 200 + 50 * index Hz: the fake recogniser below hears sentence ``index`` in it."""
    t = np.arange(int(rate * seconds)) / rate
    wave = 0.5 * np.sin(2 * np.pi * (200 + 50 * index) * t).astype(np.float32)
    soundfile.write(str(path), np.stack([wave] * channels, axis=1) if channels > 1 else wave, rate)
    return path


class ToneReader:
    """A stand-in recogniser: the loudest frequency picks one of the sentences."""

    def __init__(self, sentences: list[str]):
        self.sentences = sentences

    def transcribe(self, audio: np.ndarray) -> str:
        if np.abs(audio).max() < 1e-3:
            return ""  # silence: nothing heard
        spectrum = np.abs(np.fft.rfft(audio))
        hz = np.argmax(spectrum) * SAMPLE_RATE / len(audio)
        return self.sentences[int(round((hz - 200) / 50))]


@pytest.fixture()
def spoken_sentiment(tmp_path: Path) -> tuple[Path, Path, list[dict]]:
    """80 sentiment sentences 'spoken' as tones in data/audio/*.wav, JSONL files naming them relative to themselves
    (60 to train on, 20 to validate), and a recogniser folder the test engine accepts."""
    rows = sentiment_rows(80)
    sentences = [r["text"] for r in rows]
    register_recognizer("tones", lambda p: (p / "TONES.json").is_file(),
                        lambda p, cfg: ToneReader(json.loads((p / "TONES.json").read_text())), replace=True)
    recogniser = tmp_path / "tone-recogniser"
    recogniser.mkdir()
    (recogniser / "TONES.json").write_text(json.dumps(sentences))
    (tmp_path / "data" / "audio").mkdir(parents=True)
    for i in range(len(rows)):
        tone(tmp_path / "data" / "audio" / f"{i}.wav", i, rate=22050, channels=1 + i % 2)  # 4.15 kHz at most
    lines = [json.dumps({"audio": f"audio/{i}.wav", "label": r["label"]}) + "\n" for i, r in enumerate(rows)]
    data = tmp_path / "data" / "spoken.jsonl"
    soundfile.write(str(tmp_path / "data" / "audio" / "silent.wav"), np.zeros(4000, dtype=np.float32), 8000)
    silent = json.dumps({"audio": "audio/silent.wav", "label": "pos"}) + "\n"
    data.write_text("".join(lines[:30]) + silent + "".join(lines[30:60]))  # line 31: nothing to hear
    (tmp_path / "data" / "spoken_dev.jsonl").write_text("".join(lines[60:]))
    return data, recogniser, rows


def test_audio_is_mixed_down_and_resampled_to_16k(tmp_path: Path) -> None:
    stereo = tone(tmp_path / "s.wav", 3, rate=8000, seconds=0.5, channels=2)
    samples = read_audio("s.wav", tmp_path, "here")
    assert samples.dtype == np.float32 and samples.ndim == 1 and len(samples) == SAMPLE_RATE // 2
    assert np.allclose(read_audio(stereo.read_bytes(), tmp_path, "here"), samples)  # bytes, as Parquet holds them
    assert np.allclose(read_audio({"bytes": stereo.read_bytes(), "path": None}, tmp_path, "here"), samples)
    array = read_audio({"array": np.ones(22050), "sampling_rate": 44100}, tmp_path, "here")
    assert len(array) == 8000 and np.allclose(array[100:-100], 1.0, atol=1e-3)


def test_bad_audio_is_an_error_naming_the_record_and_the_path(spoken_sentiment, tmp_path: Path) -> None:
    data, recogniser, _ = spoken_sentiment
    (tmp_path / "data" / "notes.wav").write_text("not audio at all")
    (tmp_path / "data" / "cut.wav").write_bytes((tmp_path / "data" / "audio" / "0.wav").read_bytes()[:30])
    soundfile.write(str(tmp_path / "data" / "empty.wav"), np.zeros(0, dtype=np.float32), 16000)
    transcribe = Transcriber("audio", "text", tunelab.config.SpeechConfig(model=str(recogniser)))
    cases = {"missing.wav": r"line 2, column 'audio': audio file .*missing\.wav does not exist",
             "notes.wav": r"line 2, column 'audio': .*notes\.wav is not a readable audio file",
             "cut.wav": r"line 2, column 'audio': .*cut\.wav is not a readable audio file",
             "empty.wav": r"line 2, column 'audio': the audio has no samples",
             "https://example.com/a.wav": r"line 2, column 'audio': .* is a URL; tunelab reads local audio files only",
             None: r"line 2, column 'audio': no audio \(and no 'text' text either\)"}
    for value, message in cases.items():
        bad = tmp_path / "data" / "bad.jsonl"
        bad.write_text(json.dumps({"audio": "audio/1.wav", "label": "pos"}) + "\n"
                       + json.dumps({"audio": value, "label": "pos"}) + "\n")
        with pytest.raises(tunelab.DataError, match=message):
            transcribe(read_records(bad))
    bad.write_text(json.dumps({"audio": "audio/1.wav", "text": "typed too", "label": "pos"}) + "\n")
    with pytest.raises(tunelab.DataError, match="line 1: has both 'audio' .* and 'text'"):
        transcribe(read_records(bad))
    with pytest.raises(tunelab.ModelNotFoundError, match="not a packaged recogniser .*whisper-tiny.en"):
        resolve_recognizer(str(tmp_path / "nowhere"))
    with pytest.raises(tunelab.ModelNotFoundError, match="no speech engine reads this folder"):
        resolve_recognizer(str(tmp_path / "data"))


def test_a_text_task_learns_from_speech_and_predicts_from_audio_or_text(spoken_sentiment, tiny_bert: Path,
                                                                        tmp_path: Path, capsys) -> None:
    data, recogniser, rows = spoken_sentiment
    cfg = tiny_config(tiny_bert, tmp_path / "run", epochs=10)
    cfg["data"].update(train=str(data), validation=str(data.with_name("spoken_dev.jsonl")), audio_column="audio",
                       speech={"model": str(recogniser)})
    run = tunelab.fit(cfg)
    err = capsys.readouterr().err
    assert "speech: no speech heard in 1 of 61 records, left out: " in err and "spoken.jsonl line 31" in err
    assert "data: 60 training and 20 validation records" in err
    manifest = json.loads((Path(run.artifact_dir) / "manifest.json").read_text())
    assert manifest["speech"]["engine"] == "tones" and manifest["speech"]["audio_column"] == "audio"
    assert manifest["speech"]["path"] == str(recogniser) and len(manifest["speech"]["fingerprint"]) == 16
    assert run.metrics["accuracy"] >= 0.7  # it learned from the transcripts (one class for all scores 0.5)

    predictor = tunelab.Predictor.load(run.artifact_dir)
    audio = tmp_path / "data" / "audio"
    spoken = predictor.predict([{"audio": str(audio / f"{i}.wav")} for i in range(len(rows))])
    typed = predictor.predict([{"text": r["text"]} for r in rows])
    assert [p["label"] for p in spoken] == [p["label"] for p in typed]  # the transcript is what the task reads
    mixed = predictor.predict([{"audio": str(audio / "0.wav")}, {"audio": str(audio / "gone.wav")},
                               {"audio": str(audio / "silent.wav")}], on_error="record")
    assert mixed[0]["label"] == typed[0]["label"] and "gone.wav does not exist" in mixed[1]["error"]
    assert "inputs row 2, column 'audio': the recogniser" in mixed[2]["error"] and "heard no speech" in mixed[2]["error"]
    assert predictor.evaluate(data.with_name("spoken_dev.jsonl"))["accuracy"] == pytest.approx(run.metrics["accuracy"])

    tone(audio / "0.wav", 1, rate=22050)  # the same path, recorded again: heard again, not served from the cache
    assert predictor.predict([{"audio": str(audio / "0.wav")}])[0] == typed[1]

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from tunelab.serve import KeyStore, ServeSettings
    from tunelab.serve.app import create_app

    uri = "data:audio/wav;base64," + base64.b64encode((audio / "0.wav").read_bytes()).decode()
    with TestClient(create_app(ServeSettings(), {"spoken": predictor}, KeyStore([])), raise_server_exceptions=False) as api:
        reply = api.post("/v1/models/spoken/predict", json={"inputs": [{"audio": uri}]})
        assert reply.status_code == 200 and reply.json()["predictions"][0]["label"] == typed[1]["label"]
        refused = api.post("/v1/models/spoken/predict", json={"inputs": [{"audio": str(audio / "0.wav")}]})
        assert refused.status_code == 422 and "data URI" in refused.text  # no paths on the server's own disk
        assert api.get("/v1/models").json()["models"][0]["media"] == {"audio": "audio"}
        recorded = (audio / "0.wav").read_bytes()  # or as multipart/form-data, the recording as a file part
        sent = api.post("/v1/models/spoken/predict/upload", files={"audio": ("0.wav", recorded, "audio/wav")})
        assert sent.status_code == 200 and sent.json()["predictions"][0]["label"] == typed[1]["label"], sent.text

    shutil.rmtree(recogniser)  # the artifact names its recogniser; without it, spoken inputs say what is missing
    with pytest.raises(tunelab.ModelNotFoundError, match="tone-recogniser"):
        tunelab.Predictor.load(run.artifact_dir).predict([{"audio": str(audio / "0.wav")}])


def test_speech_config_is_validated(tiny_bert: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_bert, tmp_path / "run")
    cfg["data"].update(audio_column="audio", speech={"model": "whisper-tiny.en", "beam_size": 0})
    with pytest.raises(tunelab.ConfigError, match="data.speech.beam_size"):
        tunelab.fit(cfg, train=[{"audio": "a.wav", "label": "x"}])
    cfg["data"]["speech"] = {"model": str(tmp_path / "none")}
    with pytest.raises(tunelab.ModelNotFoundError, match="not a packaged recogniser"):
        tunelab.fit(cfg, train=[{"audio": "a.wav", "label": "x"}])
    assert not (tmp_path / "run").exists()  # refused before any work


def test_packaged_whisper_tiny_en_transcribes_a_spoken_digit() -> None:
    """The real recogniser on a real recording: FSDD's 7_jackson_0.wav (8 kHz, CC BY-SA 4.0, see data/speech)."""
    pytest.importorskip("faster_whisper")
    transcribe = Transcriber("audio", "text", tunelab.config.SpeechConfig(model="whisper-tiny.en", language="en"))
    out = transcribe(read_records([{"audio": str(DATA / "7_jackson_0.wav")}, {"audio": str(DATA / "3_theo_0.wav")}]))
    words = [row["text"].lower().strip(" .!") for row in out.rows]
    assert words[0] in ("seven", "7") and words[1] in ("three", "3"), words
    assert transcribe.describe()["engine"] == "faster_whisper"


def test_a_local_hugging_face_whisper_folder_runs_through_transformers(tmp_path: Path) -> None:
    """A tiny random Whisper saved as a Hugging Face folder: detected as the transformers engine and run through
    its speech-recognition pipeline (random weights: any text, but a string, from 16 kHz audio)."""
    from transformers import (
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizerFast,
    )

    packaged = resolve_recognizer("whisper-tiny.en").path
    tokenizer = WhisperTokenizerFast(tokenizer_file=str(packaged / "tokenizer.json"))
    config = WhisperConfig(vocab_size=len(tokenizer), d_model=16, encoder_layers=1, decoder_layers=1,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                           decoder_ffn_dim=32, max_target_positions=32, max_source_positions=1500,
                           decoder_start_token_id=50257, eos_token_id=50256, pad_token_id=50256,
                           bos_token_id=50256)
    model = WhisperForConditionalGeneration(config)
    model.generation_config.max_new_tokens = 4
    folder = tmp_path / "tiny-whisper"
    model.save_pretrained(folder)
    WhisperProcessor(WhisperFeatureExtractor(), tokenizer).save_pretrained(folder)
    tone(tmp_path / "a.wav", 2)
    transcribe = Transcriber("audio", "text", tunelab.config.SpeechConfig(model=str(folder)))
    assert transcribe.resolved.engine == "transformers"
    text = transcribe.recognizer.transcribe(read_audio("a.wav", tmp_path, "here"))
    assert isinstance(text, str)
