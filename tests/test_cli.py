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
