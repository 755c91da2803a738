import json
from pathlib import Path

import pytest
import yaml

from tunelab.cli import main

from conftest import sentiment_rows


def _write(tmp_path: Path, tiny_bert: Path) -> Path:
    data = tmp_path / "train.csv"
    data.write_text("text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in sentiment_rows(48)), encoding="utf-8")
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump({"model": str(tiny_bert), "output_dir": str(tmp_path / "run"), "method": "lora",
                                      "data": {"train": "train.csv", "max_length": 32},
                                      "train": {"epochs": 1, "batch_size": 8}}))
    return config


@pytest.mark.slow
def test_train_predict_eval_info(tiny_bert: Path, tmp_path: Path, capsys) -> None:
    config = _write(tmp_path, tiny_bert)
    assert main(["train", str(config), "train.epochs=2", "method.r=4"]) == 0
    out = capsys.readouterr().out
    assert "validation accuracy" in out and "plot:" in out
    manifest = json.loads((tmp_path / "run" / "artifact" / "manifest.json").read_text())
    assert manifest["config"]["train"]["epochs"] == 2 and manifest["method"]["r"] == 4

    assert main(["predict", str(tmp_path / "run"), "the film was great", "the meal was dull"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["label"] in ("pos", "neg")

    assert main(["predict", str(tmp_path / "run"), "--file", str(tmp_path / "train.csv"), "--output", str(tmp_path / "p.jsonl")]) == 0
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 48

    assert main(["eval", str(tmp_path / "run"), str(tmp_path / "train.csv"), "--json"]) == 0
    assert "accuracy" in json.loads(capsys.readouterr().out)

    assert main(["info", str(tmp_path / "run")]) == 0
    assert json.loads(capsys.readouterr().out)["task"]["name"] == "classification"
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "minilm" in out and "tasks: classification, ner, relation, qa" in out and "strategies: finetune" in out


def test_bad_config_value_gives_one_clear_error(tiny_bert: Path, tmp_path: Path, capsys) -> None:
    config = _write(tmp_path, tiny_bert)
    assert main(["train", str(config), "method.name=lorra"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid config") and "method.name: unknown method 'lorra'" in err and "prefix_tuning" in err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_bad_data_gives_one_clear_error(tiny_bert: Path, tmp_path: Path, capsys) -> None:
    config = _write(tmp_path, tiny_bert)
    assert main(["train", str(config), "data.text_column=review"]) == 2
    err = capsys.readouterr().err
    assert "column 'review' (input text) not found" in err and "data.text_column" in err


@pytest.fixture(scope="module")
def small_artifact(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import tunelab

    from conftest import tiny_config

    out = tmp_path_factory.mktemp("stream") / "run"
    return tunelab.fit(tiny_config(tiny_bert, out, epochs=1), train=sentiment_rows(32)).artifact_dir


@pytest.mark.slow
def test_predict_streams_a_large_file_and_resumes_a_killed_job(small_artifact: Path, tmp_path: Path, capsys,
                                                                monkeypatch) -> None:
    import tunelab.data

    texts = [r["text"] for r in sentiment_rows(3000, seed=3)]
    texts[1234] = ""  # a blank line stays an input (an error record in its place)
    big = tmp_path / "big.txt"
    big.write_text("\n".join(texts) + "\n", encoding="utf-8")

    def whole_file(*args, **kwargs):
        raise AssertionError("a .txt/.jsonl input must be streamed, not read whole")

    monkeypatch.setattr(tunelab.data, "_read_file", whole_file)
    out = tmp_path / "out.jsonl"
    assert main(["predict", str(small_artifact), "--file", str(big), "--output", str(out), "--chunk", "256"]) == 0
    full = out.read_text().splitlines()
    assert [json.loads(line)["row"] for line in full] == list(range(1, 3001))
    assert "error" in json.loads(full[1234]) and "label" in json.loads(full[1235])

    # a job killed after 1,000 rows, half-way through writing row 1,001
    partial = tmp_path / ".again.jsonl.partial"
    partial.write_text("\n".join(full[:1000]) + "\n" + full[1000][:17], encoding="utf-8")
    again = tmp_path / "again.jsonl"
    assert main(["predict", str(small_artifact), "--file", str(big), "--output", str(again), "--chunk", "256"]) == 2
    assert "--resume" in capsys.readouterr().err and not again.exists()
    assert main(["predict", str(small_artifact), "--file", str(big), "--output", str(again), "--chunk", "256",
                 "--resume"]) == 0
    assert "1000 rows already written" in capsys.readouterr().err
    assert again.read_text().splitlines() == full and not partial.exists()


def test_a_missing_input_leaves_no_partial_output(small_artifact: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out.jsonl"
    assert main(["predict", str(small_artifact), "--file", str(tmp_path / "nope.txt"), "--output", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err and not list(tmp_path.iterdir())


def test_a_bad_line_in_a_streamed_file_is_named_and_nothing_is_kept(small_artifact: Path, tmp_path: Path,
                                                                      capsys) -> None:
    data = tmp_path / "in.jsonl"
    data.write_text('{"text": "the film was great"}\n{"text": "fine"\n[1, 2]\n', encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert main(["predict", str(small_artifact), "--file", str(data), "--output", str(out)]) == 2
    assert "in.jsonl line 2: invalid JSON" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]  # no output, no partial file
    (tmp_path / "bad.txt").write_bytes(b"fine\n\xff\xfe broken\n")
    assert main(["predict", str(small_artifact), "--file", str(tmp_path / "bad.txt")]) == 2
    assert "bad.txt line 2: not valid utf-8" in capsys.readouterr().err
