"""The severe cases of "trustworthy by default": planted malicious files run nothing, user files are never
deleted, every input gets its output line, and a changed config never silently mixes into a resumed run."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tunelab
from tunelab.artifact import file_sha256
from tunelab.cli import main

from conftest import sentiment_rows, tiny_config

SRC = Path(__file__).resolve().parent.parent / "src" / "tunelab"


@pytest.fixture(scope="module")
def artifact(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One trained tiny classification artifact; tests copy it before tampering."""
    out = tmp_path_factory.mktemp("safety") / "run"
    tunelab.fit(tiny_config(tiny_bert, out, epochs=1), train=sentiment_rows(40))
    return out / "artifact"


def _copy(artifact: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy" / "artifact"
    shutil.copytree(artifact, target)
    return target


def _add_file(artifact: Path, relative: str, content: str) -> None:
    """What an attacker who can write the folder would do: add a file and list it with its hash."""
    path = artifact / relative
    path.write_text(content, encoding="utf-8")
    manifest = json.loads((artifact / "manifest.json").read_text())
    manifest["files"] = sorted(set(manifest["files"]) | {relative})
    manifest["sha256"][relative] = file_sha256(path)
    (artifact / "manifest.json").write_text(json.dumps(manifest))


class _Evil:
    """Unpickling this creates a marker folder: the stand-in for arbitrary code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


# ---- 1. code execution from a checkpoint ------------------------------------------------------------------
def test_crafted_checkpoint_runs_nothing_on_resume(tiny_bert: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    marker = tmp_path / "PWNED"
    torch.save({"model": {}, "optimizer": {}, "scheduler": {}, "rng": _Evil(marker), "loop": {}},
               run_dir / "checkpoint.pt")
    with pytest.raises(tunelab.TrainingError, match=r"checkpoint\.pt is not a checkpoint tunelab wrote.*nothing in it was run"):
        tunelab.fit(tiny_config(tiny_bert, run_dir, epochs=1, resume=True), train=sentiment_rows(40))
    assert not marker.exists()


def test_source_has_no_unsafe_loading() -> None:
    text = {p: p.read_text() for p in SRC.rglob("*.py")}
    assert not [p for p, t in text.items() if "weights_only=False" in t]
    assert not [p for p, t in text.items() if "pickle" in t]
    unsafe = [f"{p.name}:{n}" for p, t in text.items() for n, line in enumerate(t.splitlines(), 1)
              if re.search(r"\.from_pretrained\(", line) and "trust_remote_code=False" not in line]
    assert not unsafe, unsafe


# ---- 2. code execution from an artifact's tokenizer, network switched on by a manifest ----------------------
def test_tokenizer_auto_map_code_never_runs_even_with_yes_on_stdin(artifact: Path, tmp_path: Path, monkeypatch) -> None:
    art = _copy(artifact, tmp_path)
    marker = tmp_path / "PWNED"
    _add_file(art, "tokenizer/evil.py", f"import os\nos.mkdir({str(marker)!r})\n"
              "from transformers import BertTokenizerFast\nclass EvilTokenizer(BertTokenizerFast):\n    pass\n")
    config = json.loads((art / "tokenizer" / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", "evil.EvilTokenizer"]}
    config.pop("tokenizer_class", None)
    _add_file(art, "tokenizer/tokenizer_config.json", json.dumps(config))
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\ny\ny\n"))
    try:
        predictor = tunelab.Predictor.load(art)
        predictor.predict(["the film was great"])
    except tunelab.TunelabError as err:
        assert "never runs code" in str(err)
    assert not marker.exists()
    assert sys.stdin.read() == "y\ny\ny\n"  # nothing was asked


@pytest.mark.slow
def test_tokenizer_auto_map_in_a_subprocess_with_piped_yes(artifact: Path, tmp_path: Path) -> None:
    art = _copy(artifact, tmp_path)
    marker = tmp_path / "PWNED"
    _add_file(art, "tokenizer/evil.py", f"import os\nos.mkdir({str(marker)!r})\n")
    config = json.loads((art / "tokenizer" / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    config["tokenizer_class"] = "EvilTokenizer"
    _add_file(art, "tokenizer/tokenizer_config.json", json.dumps(config))
    done = subprocess.run([sys.executable, "-m", "tunelab.cli", "predict", str(art), "a fine film"], input="y\n",
                          capture_output=True, text=True, timeout=300)
    assert not marker.exists()
    assert done.returncode == 2 and "never runs code" in done.stderr and "Traceback" not in done.stderr
    assert done.stdout == ""


def test_manifest_cannot_switch_the_network_on(artifact: Path, tmp_path: Path, monkeypatch) -> None:
    art = _copy(artifact, tmp_path)
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["model_format"] = "peft"
    manifest["base_model"] = {"name": "someone/some-model", "source": "hub", "allow_network": True}
    (art / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.delenv("TUNELAB_ALLOW_NETWORK", raising=False)
    with pytest.raises(tunelab.ModelNotFoundError, match="works offline by default"):
        tunelab.Predictor.load(art)
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


# ---- 3. no silent deletion of user files --------------------------------------------------------------------
def test_foreign_artifact_folder_is_never_replaced(tiny_bert: Path, tmp_path: Path) -> None:
    mine = tmp_path / "run" / "artifact"
    mine.mkdir(parents=True)
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(tunelab.ArtifactError, match=r"not a tunelab artifact.*nothing was changed"):
        tunelab.fit(tiny_config(tiny_bert, tmp_path / "run", epochs=1), train=sentiment_rows(40))
    assert (mine / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".tunelab.lock", "artifact"]


@pytest.mark.slow
def test_replacing_own_artifact_is_said(tiny_bert: Path, tmp_path: Path, capsys) -> None:
    cfg = tiny_config(tiny_bert, tmp_path / "run", epochs=1)
    tunelab.fit(cfg, train=sentiment_rows(40))
    capsys.readouterr()
    tunelab.fit(cfg, train=sentiment_rows(40))
    assert "replaced the previous artifact" in capsys.readouterr().err


# ---- 4. one output per input, in order ----------------------------------------------------------------------
def _cli(argv: list[str], capsys, monkeypatch, stdin: str | None = None) -> tuple[int, list[dict], str]:
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(argv)
    captured = capsys.readouterr()
    return code, [json.loads(line) for line in captured.out.splitlines() if line.strip()], captured.err


def test_blank_stdin_lines_keep_their_place(artifact: Path, capsys, monkeypatch) -> None:
    code, out, err = _cli(["predict", str(artifact)], capsys, monkeypatch, stdin="the film was great\n\n  \nthe meal was dull\n")
    assert code == 0 and [o["row"] for o in out] == [1, 2, 3, 4]
    assert "label" in out[0] and "label" in out[3]
    assert "empty text" in out[1]["error"] and "empty text" in out[2]["error"]
    assert "2 of 4 inputs could not be predicted" in err


def test_empty_csv_cell_and_ids(artifact: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    data = tmp_path / "in.csv"
    data.write_text("id,text\na1,the film was great\na2,\na3,the meal was dull\n")
    code, out, _ = _cli(["predict", str(artifact), "--file", str(data)], capsys, monkeypatch)
    assert code == 0 and [(o["row"], o["id"]) for o in out] == [(2, "a1"), (3, "a2"), (4, "a3")]
    assert "error" in out[1] and "line 3" in out[1]["error"] and "label" in out[2]


def test_on_error_fail_names_the_row(artifact: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    data = tmp_path / "in.csv"
    data.write_text("text\nthe film was great\n\"\"\nfine\n")
    code, out, err = _cli(["predict", str(artifact), "--file", str(data), "--on-error", "fail",
                           "--output", str(tmp_path / "out.jsonl")], capsys, monkeypatch)
    assert code == 2 and "line 3" in err and "empty text" in err and "Traceback" not in err
    assert not (tmp_path / "out.jsonl").exists()  # nothing half-written
    assert not list(tmp_path.glob(".out.jsonl*"))  # no partial output kept for a bad input


def test_stray_quote_is_reported_where_it_opened(artifact: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    data = tmp_path / "in.csv"
    data.write_text("text,label\nfine,pos\n\"stray quote,pos\nthe meal was dull,neg\nok,pos\n")
    code, out, err = _cli(["predict", str(artifact), "--file", str(data)], capsys, monkeypatch)
    assert code == 2 and "line 3: a quote opened on this line is not closed" in err and not out


def test_multiline_quoted_field_is_one_record(tmp_path: Path) -> None:
    data = tmp_path / "in.csv"
    data.write_text('text,label\n"two\nlines",pos\nok,neg\n')
    records = tunelab.data.read_records(data)
    assert records.rows == [{"text": "two\nlines", "label": "pos"}, {"text": "ok", "label": "neg"}]
    assert records.lines == [2, 4]


# ---- 5. resume and a changed config -------------------------------------------------------------------------
def _interrupted(tiny_bert: Path, tmp_path: Path, **train) -> tuple[dict, Path]:
    """A run with a checkpoint left behind, as a killed run leaves it."""
    import tunelab.api as api

    cfg = tiny_config(tiny_bert, tmp_path / "run", epochs=2, checkpoint_every=2, **train)
    original = api.write_artifact

    def die(*args, **kwargs):
        raise KeyboardInterrupt
    api.write_artifact = die
    try:
        with pytest.raises(KeyboardInterrupt):
            tunelab.fit(cfg, train=sentiment_rows(40))
    finally:
        api.write_artifact = original
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
    return cfg, tmp_path / "run"


@pytest.mark.slow
def test_resume_with_changed_learning_rate_names_the_field(tiny_bert: Path, tmp_path: Path) -> None:
    cfg, run_dir = _interrupted(tiny_bert, tmp_path)
    changed = {**cfg, "train": {**cfg["train"], "resume": True, "learning_rate": 5e-4}}
    with pytest.raises(tunelab.TrainingError, match=r"train\.learning_rate: 0\.001 -> 0\.0005.*resume_with_changes"):
        tunelab.fit(changed, train=sentiment_rows(40))
    allowed = {**changed, "train": {**changed["train"], "resume_with_changes": True}}
    run = tunelab.fit(allowed, train=sentiment_rows(40))
    assert run.train.history[-1]["lr"] <= 5e-4  # the new rate applies from the checkpoint on


def test_resume_with_changed_method_or_rank_is_refused(tiny_bert: Path, tmp_path: Path) -> None:
    cfg, run_dir = _interrupted(tiny_bert, tmp_path)
    changed = {**cfg, "method": {"name": "lora", "r": 4}, "train": {**cfg["train"], "resume": True,
                                                                     "resume_with_changes": True}}
    with pytest.raises(tunelab.TrainingError, match=r"method\.name: 'full' -> 'lora'.*cannot change half way"):
        tunelab.fit(changed, train=sentiment_rows(40))
    assert (run_dir / "checkpoint.pt").is_file()


@pytest.mark.slow
def test_forgetting_resume_does_not_discard_the_checkpoint(tiny_bert: Path, tmp_path: Path) -> None:
    cfg, run_dir = _interrupted(tiny_bert, tmp_path)
    with pytest.raises(tunelab.TrainingError, match=r"unfinished run \(step \d+ of \d+\).*train\.resume=true"):
        tunelab.fit(cfg, train=sentiment_rows(40))
    assert (run_dir / "checkpoint.pt").is_file()
    tunelab.fit({**cfg, "train": {**cfg["train"], "discard_checkpoint": True}}, train=sentiment_rows(40))
    assert not (run_dir / "checkpoint.pt").exists()


def test_resume_with_different_data_is_refused(tiny_bert: Path, tmp_path: Path) -> None:
    cfg, _ = _interrupted(tiny_bert, tmp_path)
    with pytest.raises(tunelab.TrainingError, match="train_rows_sha256"):
        tunelab.fit({**cfg, "train": {**cfg["train"], "resume": True}}, train=sentiment_rows(40, seed=9))
