"""What the documentation shows runs: every README Python snippet and every example config.

The code runs as written, with the packaged models swapped for tiny random models of the same families
(MiniLM -> a 2-layer BERT, SmolLM2 -> a 2-layer Llama with SmolLM2's tokenizer), two optimizer steps, and data
files the snippets name replaced by small files in the same format. Configs read the first rows of their
real data files where those exist (``../shared/data``), and are skipped, naming the file, where they do not.
The README's main example also runs with the real MiniLM (tests/test_integration.py).
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

import tunelab
from tunelab.config import build_config, load_config
from tunelab.data import read_records

from conftest import sentiment_rows

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))



def shrunk(cfg: tunelab.Config, tiny_bert: Path, tiny_llama: Path) -> dict[str, Any]:
    """The config with the packaged models swapped for tiny ones and the training cut to two steps."""
    d = cfg.to_dict()
    causal = d["model"] == "smollm2"
    d["model"] = str(tiny_llama if causal else tiny_bert) if d["model"] in ("minilm", "smollm2") else d["model"]
    d["data"]["max_length"] = min(d["data"]["max_length"], 256 if causal else 128)
    for key in ("stride", "doc_stride"):
        if d["task"].get(key) is not None:
            d["task"][key] = d["data"]["max_length"] // 4
    d["train"].update(max_steps=2, eval_every=None, batch_size=4, eval_batch_size=16)
    d["setfit"]["max_pairs"] = 16
    d["generate"]["max_new_tokens"] = min(d["generate"]["max_new_tokens"], 8)
    d["prompt"]["embedder"] = str(tiny_bert)
    return d


# ---- README snippets ----------------------------------------------------------------------------------------------
def readme_snippets() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, re.S)


def _snippet_files(cwd: Path) -> None:
    """The files the snippets name, small and in their formats."""
    demo = cwd / "src" / "tunelab" / "_resources"
    demo.mkdir(parents=True)
    shutil.copy(ROOT / "src" / "tunelab" / "_resources" / "demo_sentiment.jsonl", demo)
    with open(cwd / "sixteen_examples.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["text", "label"])
        writer.writeheader()
        writer.writerows(sentiment_rows(16))
    dialogs = [{"dialogue": f"#Person1#: Shall we meet at {h}?\n#Person2#: Yes, {h} works.",
                "summary": f"They agree to meet at {h}."} for h in ("ten", "noon", "six", "eight")]
    (cwd / "dialogs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in dialogs), encoding="utf-8")
    qas = [{"id": f"q{i}", "question": f"What colour is thing {i}?",
            "answers": [{"text": "red", "answer_start": len(f"Thing {i} is ")}]} for i in range(8)]
    squad = {"version": "1.1", "data": [{"title": f"t{i}", "paragraphs": [
        {"context": f"Thing {i} is red. Other things are blue.", "qas": [qa]}]} for i, qa in enumerate(qas)]}
    (cwd / "train-v1.1.json").write_text(json.dumps(squad), encoding="utf-8")


def test_the_readme_has_snippets_for_every_task() -> None:
    code = "\n".join(readme_snippets())
    for shown in ("configs/conll2003_ner.yaml", '"task": "qa"', 'task="summarization"', 'strategy="zero_shot"',
                  "register_task", "register_method"):
        assert shown in code


@pytest.mark.slow
def test_every_readme_snippet_runs(tiny_bert: Path, tiny_llama: Path, tmp_path: Path, monkeypatch) -> None:
    real_fit = tunelab.fit

    def fit(config: Any = None, *, train: Any = None, validation: Any = None, test: Any = None, hooks: Any = None,
            **overrides: Any) -> tunelab.Run:
        if isinstance(config, (str, Path)):
            config = load_config(config)
        cfg = build_config(config, **overrides)
        if cfg.data.train and not Path(cfg.data.train).exists():
            pytest.skip(f"the README's config needs {cfg.data.train}")
        d = shrunk(cfg, tiny_bert, tiny_llama)
        for split in ("train", "validation", "test"):  # a few real rows of the config's own files
            if d["data"][split] and Path(d["data"][split]).exists():
                records = read_records(d["data"][split], format=d["data"]["format"])
                d["data"][split] = None
                if split == "train":
                    train = records.subset(range(min(24, len(records))))
                elif split == "validation":
                    validation = records.subset(range(min(8, len(records))))
        return real_fit(d, train=train, validation=validation, test=test, hooks=hooks)

    monkeypatch.setattr(tunelab, "fit", fit)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    _snippet_files(tmp_path)
    namespace: dict[str, Any] = {"tunelab": tunelab}
    for i, code in enumerate(readme_snippets()):
        code = code.replace("import tunelab\n", "")  # the patched module is already in the namespace
        exec(compile(code, f"README.md python snippet {i + 1}", "exec"), namespace)


# ---- example configs ----------------------------------------------------------------------------------------------
FALLBACK = {"qa": [{"question": "What colour is it?", "context": f"Item {i} is red, the sky is blue.",
                    "answers": {"text": ["red"], "answer_start": [len(f"Item {i} is ")]}} for i in range(12)]}


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_example_config_trains_saves_and_predicts(path: Path, tiny_bert: Path, tiny_llama: Path,
                                                        tmp_path: Path) -> None:
    cfg = load_config(path)
    splits: dict[str, Any] = {}
    for split, rows in (("train", 24), ("validation", 8)):  # (a slice of a test file may hold labels the slice of
        # the training file never saw)
        source = getattr(cfg.data, split)
        if source is None:
            continue
        if not Path(source).exists():
            pytest.skip(f"{path.name} reads {source}, which is not on this machine")
        records = read_records(source, format=cfg.data.format, encoding=cfg.data.encoding)
        splits[split] = records.subset(range(min(rows, len(records))))
    if "train" not in splits and cfg.task.name in FALLBACK:
        splits["train"] = FALLBACK[cfg.task.name]
    d = shrunk(cfg, tiny_bert, tiny_llama)
    d["output_dir"] = str(tmp_path / "run")
    d["data"].update(train=None, validation=None, test=None)
    run = tunelab.fit(d, **splits)
    predictor = tunelab.Predictor.load(run.artifact_dir)
    rows = splits.get("validation") or splits.get("train")
    sample = read_records(rows).subset(range(2))
    for row in sample.rows:  # the task's request schema accepts its own records
        predictor.input_schema.model_validate(row)
    predictions = predictor.predict(sample)
    assert len(predictions) == 2
    for prediction in predictions:
        predictor.output_schema.model_validate(prediction)


def test_every_public_function_and_class_has_a_docstring() -> None:
    """Public names of every module, and public methods of public classes (an override inherits its base's)."""
    import importlib
    import inspect
    import pkgutil

    missing = []
    for info in pkgutil.walk_packages(tunelab.__path__, "tunelab."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            if not inspect.getdoc(obj):
                missing.append(f"{module.__name__}.{name}")
            for member_name, member in (vars(obj).items() if inspect.isclass(obj) else []):
                if member_name.startswith("_") or not (inspect.isfunction(member) or isinstance(
                        member, (classmethod, staticmethod, property))):
                    continue
                doc = inspect.getdoc(member) if isinstance(member, property) else inspect.getdoc(getattr(obj, member_name))
                if not doc:
                    missing.append(f"{module.__name__}.{name}.{member_name}")
    assert not missing, "no docstring: " + ", ".join(missing)


def test_public_api_documents_its_arguments() -> None:
    import inspect

    for name in tunelab.__all__:
        obj = getattr(tunelab, name)
        if inspect.isfunction(obj) and [p for p in inspect.signature(obj).parameters if p not in ("self", "cls")]:
            assert "Args:" in inspect.getdoc(obj), name
