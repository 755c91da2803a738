"""Speech input: word error rate and speed of tunelab's offline recogniser (the packaged whisper-tiny.en through
faster-whisper, audio read by soundfile and resampled by scipy) against faster-whisper used directly on the same
files (its own PyAV decoding and resampling), on the Free Spoken Digit Dataset, and a spoken-digit classifier
trained end to end from audio with data.audio_column (MiniLM fine-tuned on the transcripts; its validation set is
split off the training recordings, its test set is the WER's recordings).

Data: FSDD recordings (8 kHz WAV, 6 speakers, `{digit}_{speaker}_{index}.wav`, CC BY-SA 4.0), from a clone of
https://github.com/Jakobovski/free-spoken-digit-dataset (never copied into this repository). The word error rate
uses recordings with index < --test-index (FSDD's own test split is index 0-4); the classifier trains on
indices --test-index..--test-index+--train-per-digit-1 and is scored on the test recordings.

WER: each reference is the digit's English word; hypotheses are lower-cased, punctuation stripped and digits
spelled out (Whisper writes "7." or "Seven." for the same speech), then scored with jiwer.

    python bench/speech.py --fsdd /path/to/free-spoken-digit-dataset/recordings

Writes bench/results/speech.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from common import peak_rss_mb  # noqa: E402

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def normalise(text: str) -> str:
    """Lower case, no punctuation, digits spelled out (one word per digit)."""
    text = re.sub(r"\d", lambda m: f" {WORDS[int(m.group())]} ", text.lower())
    return " ".join(re.sub(r"[^a-z' ]", " ", text).split())


def recordings(folder: Path, indices: range) -> list[tuple[Path, int]]:
    found = []
    for path in sorted(folder.glob("*.wav")):
        digit, _, index = path.stem.split("_")
        if int(index) in indices:
            found.append((path, int(digit)))
    if not found:
        raise SystemExit(f"no FSDD recordings with index in {indices} under {folder}")
    return found


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    import jiwer

    return float(jiwer.wer(references, [h or "<empty>" for h in hypotheses]))


def run_tunelab(files: list[tuple[Path, int]], language: str) -> dict:
    from tunelab.config import SpeechConfig
    from tunelab.data import read_records
    from tunelab.speech import Transcriber

    transcribe = Transcriber("audio", "text", SpeechConfig(model="whisper-tiny.en", language=language))
    assert transcribe.recognizer is not None  # loaded before the clock starts, as for the peer
    started = time.perf_counter()
    hypotheses = []
    for path, _ in files:  # one record at a time, so an empty transcript is scored, not raised
        try:
            rows = transcribe(read_records([{"audio": str(path)}])).rows
            hypotheses.append(rows[0]["text"])
        except Exception as err:  # noqa: BLE001  (the recogniser heard nothing: an empty hypothesis)
            if "heard no speech" not in str(err):
                raise
            hypotheses.append("")
    return {"seconds": time.perf_counter() - started, "hypotheses": hypotheses}


def run_faster_whisper(files: list[tuple[Path, int]], language: str) -> dict:
    from faster_whisper import WhisperModel

    from tunelab.speech import resolve_recognizer

    model = WhisperModel(str(resolve_recognizer("whisper-tiny.en").path), device="cpu", compute_type="float32")
    started = time.perf_counter()
    hypotheses = []
    for path, _ in files:
        segments, _ = model.transcribe(str(path), language=language, beam_size=1, temperature=0.0,
                                       condition_on_previous_text=False, vad_filter=False)
        hypotheses.append(" ".join(s.text.strip() for s in segments).strip())
    return {"seconds": time.perf_counter() - started, "hypotheses": hypotheses}


def classify(train_files: list[tuple[Path, int]], test_files: list[tuple[Path, int]], work: Path) -> dict:
    """A spoken-digit classifier trained from audio: MiniLM fine-tuned on the transcripts (data.audio_column)."""
    import tunelab
    from tunelab.config import SpeechConfig
    from tunelab.data import read_records
    from tunelab.speech import Transcriber

    rows = lambda files: [{"audio": str(p), "label": WORDS[d]} for p, d in files]  # noqa: E731
    # fit leaves out records the recogniser hears nothing in (and says so): count them, to score them as wrong too
    heard = len(Transcriber("audio", "text", SpeechConfig(model="whisper-tiny.en", language="en"),
                            skip_silent=True)(read_records(rows(test_files))))
    started = time.perf_counter()
    run = tunelab.fit({"model": "minilm", "output_dir": str(work / "digits"), "strategy": "finetune",
                       "data": {"audio_column": "audio", "max_length": 16,
                                "speech": {"model": "whisper-tiny.en", "language": "en"}},
                       "method": "full", "train": {"batch_size": 16, "learning_rate": 1e-4}},
                      train=rows(train_files), test=rows(test_files))  # validation: 10% split off the training rows
    accuracy = run.test_metrics["accuracy"]
    return {"test_accuracy_on_heard": round(accuracy, 4), "test_records_heard": heard,
            "test_accuracy_unheard_counted_wrong": round(accuracy * heard / len(test_files), 4),
            "validation_accuracy": round(run.metrics["accuracy"], 4),
            "train_records": len(train_files), "test_records": len(test_files),
            "seconds_with_transcription": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fsdd", type=Path, required=True, help="FSDD's recordings/ folder")
    parser.add_argument("--test-index", type=int, default=5, help="recordings with index below this are the test set")
    parser.add_argument("--train-per-digit", type=int, default=10, help="training recordings per digit and speaker")
    parser.add_argument("--language", default="en")
    parser.add_argument("--work", type=Path, default=Path("/tmp/tunelab-bench-speech"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "speech.json")
    parser.add_argument("--classifier-only", action="store_true",
                        help="re-run only the spoken-digit classifier, keeping the WER results already in --out")
    args = parser.parse_args()

    test = recordings(args.fsdd, range(args.test_index))
    train = recordings(args.fsdd, range(args.test_index, args.test_index + args.train_per_digit))
    if args.classifier_only:
        report = json.loads(args.out.read_text())
        report["spoken_digit_classifier"] = classify(train, test, args.work)
        report["command"] = [*([report["command"]] if isinstance(report["command"], str) else report["command"]),
                             "python bench/speech.py " + " ".join(sys.argv[1:])]
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report["spoken_digit_classifier"], indent=2))
        return
    references = [WORDS[d] for _, d in test]
    audio_seconds = sum(os.path.getsize(p) - 44 for p, _ in test) / (2 * 8000)  # 16-bit 8 kHz mono PCM
    systems = {}
    for name, run in (("tunelab", run_tunelab), ("faster_whisper_direct", run_faster_whisper)):
        print(f"running {name} on {len(test)} recordings ...", flush=True)
        result = run(test, args.language)
        hyps = [normalise(h) for h in result["hypotheses"]]
        systems[name] = {"wer": round(word_error_rate(references, hyps), 4),
                         "exact": round(sum(h == r for h, r in zip(hyps, references)) / len(test), 4),
                         "clips_per_s": round(len(test) / result["seconds"], 2),
                         "real_time_factor": round(result["seconds"] / audio_seconds, 4),
                         "examples": [{"file": p.name, "heard": h} for (p, _), h in zip(test[:8], result["hypotheses"])]}
        print(f"  {name}: {systems[name]}", flush=True)
    report = {
        "dataset": f"FSDD ({args.fsdd}), {len(test)} test recordings (index < {args.test_index}), "
                   f"{audio_seconds:.0f} s of audio",
        "recogniser": "whisper-tiny.en (faster-whisper, fp32, greedy at temperature 0 without fallback, no VAD)",
        "systems": systems,
        "speed_ratio_tunelab_vs_direct": round(systems["tunelab"]["clips_per_s"]
                                              / systems["faster_whisper_direct"]["clips_per_s"], 3),
        "spoken_digit_classifier": classify(train, test, args.work),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "command": "python bench/speech.py " + " ".join(sys.argv[1:]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
