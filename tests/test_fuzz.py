"""The fuzz suite: bad data, configs, overrides, CLI options, tampered artifacts and checkpoints, faults and
odd prediction inputs. Each case asserts exit status 2 (or the exception type), a message naming the
file/row/field, no traceback, and that nothing the user had was lost. Property-based cases use hypothesis.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tunelab
from tunelab.cli import main

from conftest import sentiment_rows, tiny_config

HERE = Path(__file__).resolve().parent
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def cli(argv: list[str], capsys, stdin: str | None = None) -> tuple[int, str, str]:
    old = sys.stdin
    if stdin is not None:
        sys.stdin = io.StringIO(stdin)
    try:
        code = main(argv)
    finally:
        sys.stdin = old
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def user_error(code: int, err: str, *names: str) -> None:
    """Exit 2, an ``error:`` message naming each of ``names``, no traceback."""
    assert code == 2, err
    assert "Traceback" not in err and "internal error" not in err, err
    assert err.startswith("error: ") or err.startswith("usage: "), err
    for name in names:
        assert name in err, f"{name!r} not in {err!r}"


@pytest.fixture()
def config_file(tiny_bert: Path, tmp_path: Path) -> Path:
    data = tmp_path / "train.csv"
    data.write_text("text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in sentiment_rows(40)))
    cfg = tiny_config(tiny_bert, tmp_path / "run", epochs=1)
    cfg["data"]["train"] = str(data)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def artifact(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fuzz") / "run"
    tunelab.fit(tiny_config(tiny_bert, out, epochs=1), train=sentiment_rows(40))
    return out / "artifact"


# ---- data files -----------------------------------------------------------------------------------------------
BAD_DATA = [
    ("missing_column.csv", "review,label\ngood,pos\nbad,neg\n", [], ["column 'text'", "data.text_column"]),
    ("header_only.csv", "text,label\n", [], ["has no records"]),
    ("field_count.csv", "text,label\na,pos\nb,neg,extra\n", [], ["line 3", "expected 2 fields"]),
    ("stray_quote.csv", "text,label\na,pos\n\"b,neg\nc,pos\nd,neg\n", [], ["line 3", "quote"]),
    ("dup_header.csv", "text,text\na,b\n", [], ["line 1", "duplicate"]),
    ("empty.csv", "", [], ["is empty"]),
    ("blank.csv", "\n\n  \n", [], ["is empty"]),
    ("empty_text.csv", "text,label\na,pos\n,neg\nc,pos\nd,neg\n", [], ["line 3", "empty text"]),
    ("missing_label.csv", "text,label\na,pos\nb,\nc,pos\nd,neg\n", [], ["line 3", "missing label"]),
    ("one_label.csv", "text,label\na,pos\nb,pos\nc,pos\nd,pos\n", [], ["only one label"]),
    ("bad_line.jsonl", '{"text": "a", "label": "pos"}\n{"text": "b", "label": \n', [], ["line 2", "invalid JSON"]),
    ("not_object.jsonl", '{"text": "a", "label": "pos"}\n["b", "neg"]\n', [], ["line 2", "JSON object"]),
    ("dict_label.jsonl", '{"text": "a", "label": {"x": 1}}\n{"text": "b", "label": "neg"}\n' * 3, [], ["line 1", "label"]),
    ("broken.json", '[{"text": "a", "label": "pos"},\n {"text": "b"', [], ["line 2", "invalid JSON"]),
    ("two_lists.json", '{"a": [], "b": []}', [], ["exactly one list"]),
    ("scalars.json", '[{"text": "a", "label": "pos"}, 3]', [], ["record 1", "expected an object"]),
    ("scalar.json", '42', [], ["expected a list of records"]),
    ("fields.tsv", "text\tlabel\na\tpos\nb\tneg\textra\n", [], ["line 3", "expected 2 fields"]),
    ("ambiguous.data", "just some words\nmore words here\n", [], ["data.format", ".data"]),
    ("latin1.csv", "text,label\ncaf\xe9,pos\n".encode("latin-1"), [], ["line 2", "data.encoding"]),
    ("bad_encoding_name.csv", "text,label\na,pos\n", ["data.encoding=klingon-8"], ["klingon-8", "data.encoding"]),
    ("labels.csv", "text,label\na,pos\nb,neg\nc,pos\nd,neg\n", ["data.label_column=sentiment"], ["column 'sentiment'"]),
    ("pair.csv", "text,label\na,pos\nb,neg\nc,pos\nd,neg\n", ["data.text_pair_column=other"], ["column 'other'"]),
    ("regression.csv", "text,label\na,1.5\nb,high\nc,2\nd,3\n", ["task.problem_type=regression"], ["line 3", "expected a number"]),
    ("weights.csv", "text,label\na,pos\nb,neg\nc,pos\nd,neg\n", ["train.class_weights={zz: 2}"], ["class_weights", "zz"]),
]


@pytest.mark.parametrize("name,content,overrides,expected", BAD_DATA, ids=[c[0] for c in BAD_DATA])
def test_bad_classification_data(name, content, overrides, expected, config_file: Path, tmp_path: Path, capsys) -> None:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    before = path.read_bytes()
    code, _, err = cli(["train", str(config_file), f"data.train={path}", *overrides], capsys)
    user_error(code, err, *expected)
    assert path.read_bytes() == before
    assert not (tmp_path / "run" / "artifact").exists()


BAD_NER = [
    ("one_field.conll", "EU B-ORG\nrejects\n", ["line 2", "token and a tag"]),
    ("bad_prefix.conll", "EU X-ORG\nrejects O\n\nPeter B-PER\n", ["X-ORG"]),
    ("all_o.conll", "EU O\nrejects O\n\nPeter O\n", ["no entities"]),
    ("lengths.jsonl", '{"tokens": ["a", "b"], "tags": ["O"]}\n', ["line 1", "2 tokens but 1 tags"]),
    ("no_tokens.jsonl", '{"words": ["a"]}\n', ["line 1", "'tokens'"]),
    ("span.jsonl", '{"text": "Peter", "entities": [{"start": 0, "end": 50, "label": "PER"}]}\n', ["line 1", "outside the text"]),
    ("span_keys.jsonl", '{"text": "Peter", "entities": [{"begin": 0}]}\n', ["line 1", "'start'"]),
]


@pytest.mark.parametrize("name,content,expected", BAD_NER, ids=[c[0] for c in BAD_NER])
def test_bad_ner_data(name, content, expected, config_file: Path, tmp_path: Path, capsys) -> None:
    path = tmp_path / name
    path.write_text(content)
    code, _, err = cli(["train", str(config_file), "task=ner", f"data.train={path}"], capsys)
    user_error(code, err, *expected)


BAD_OTHER_TASKS = [
    ("relation", "rel.jsonl", '{"text": "no markers here", "label": "Other"}\n{"text": "no <e1>a</e1> <e2>b</e2>", '
     '"label": "Cause-Effect(e1,e2)"}\n' * 2, ["line 1", "<e1>"]),
    ("qa", "qa.jsonl", '{"question": "who?", "context": "Ann met Bob.", "answers": {"text": ["Carl"], "answer_start": [0]}}\n' * 4,
     ["line 1", "Carl"]),
    ("qa", "qa_empty.jsonl", '{"question": "", "context": "Ann met Bob.", "answers": {"text": ["Ann"], "answer_start": [0]}}\n' * 4,
     ["line 1", "empty question"]),
]


@pytest.mark.parametrize("task,name,content,expected", BAD_OTHER_TASKS, ids=[c[1] for c in BAD_OTHER_TASKS])
def test_bad_relation_and_qa_data(task, name, content, expected, config_file: Path, tmp_path: Path, capsys) -> None:
    path = tmp_path / name
    path.write_text(content)
    code, _, err = cli(["train", str(config_file), f"task={task}", f"data.train={path}"], capsys)
    user_error(code, err, *expected)


def test_missing_and_directory_data(config_file: Path, tmp_path: Path, capsys) -> None:
    code, _, err = cli(["train", str(config_file), f"data.train={tmp_path / 'nope.csv'}"], capsys)
    user_error(code, err, "nope.csv", "does not exist")
    code, _, err = cli(["train", str(config_file), f"data.train={tmp_path}"], capsys)
    user_error(code, err, "is a directory")


def test_jsonl_saved_as_json_and_conll_under_another_name_are_read(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n')
    assert len(tunelab.data.read_records(tmp_path / "a.json")) == 2
    (tmp_path / "b.annotated").write_text("EU B-ORG\nrejects O\n\nPeter B-PER\n")
    assert tunelab.data.read_records(tmp_path / "b.annotated").rows[1] == {"tokens": ["Peter"], "tags": ["B-PER"]}
    (tmp_path / "c.txt").write_text("one sentence per line.\nAnother one\n")
    assert tunelab.data.read_records(tmp_path / "c.txt").rows == [{"text": "one sentence per line."}, {"text": "Another one"}]
    (tmp_path / "d.csv").write_text("text,label\ncafé,pos\n", encoding="latin-1")
    assert tunelab.data.read_records(tmp_path / "d.csv", encoding="latin-1").rows[0]["text"] == "café"
    (tmp_path / "e.weird").write_text("x;y\n")
    assert tunelab.data.read_records(tmp_path / "e.weird", format="text").rows == [{"text": "x;y"}]


# ---- configs and overrides ------------------------------------------------------------------------------------
BAD_OVERRIDES = [
    (["method.name=lorra"], ["method.name", "lora, adalora"]),
    (["task=poetry"], ["task.name"]),
    (["train.epochs=-1"], ["train.epochs"]),
    (["train.batch_size=0"], ["train.batch_size"]),
    (["train.learning_rate=fast"], ["train.learning_rate"]),
    (["data.max_length=4"], ["data.max_length"]),
    (["data.max_length=100000"], ["data.max_length"]),
    (["data.max_length=512"], ["data.max_length", "at most 128"]),
    (["data.validation_fraction=0.9"], ["data.validation_fraction"]),
    (["strategy=magic"], ["strategy"]),
    (["method.merge=true"], ["method.merge"]),
    (["strategy=setfit", "task=ner"], ["setfit"]),
    (["train.epochs"], ["train.epochs", "key=value"]),
    (["=3"], ["empty key"]),
    (["train.epoch=3"], ["train.epoch", "unknown field"]),
    (["colour=blue"], ["colour", "unknown field"]),
    (["task.threshold=1.5"], ["task.threshold"]),
    (["generate.top_p=2"], ["generate.top_p"]),
    (["prompt.template=no slot"], ["prompt.template"]),
    (["train.threads=0"], ["train.threads"]),
    (["few_shot_limit=0"], ["few_shot_limit"]),
    (["data.format=xlsx"], ["data.format"]),
    (["train.optimizer=adam"], ["train.optimizer"]),
    (["model=/nonexistent/model"], ["/nonexistent/model", "allow_network"]),
    (["train.resume=perhaps"], ["train.resume"]),
    (["train.discard_checkpoint=maybe"], ["train.discard_checkpoint"]),
    (["train.resume_with_changes=[1]"], ["train.resume_with_changes"]),
    (["task.modality_dropout=0.7"], ["task.modality_dropout"]),
    (["task.modality_dropout=0.2"], ["task.modality_dropout", "data.image_column"]),
]


@pytest.mark.parametrize("overrides,expected", BAD_OVERRIDES, ids=[" ".join(o) for o, _ in BAD_OVERRIDES])
def test_bad_config_overrides(overrides, expected, config_file: Path, tmp_path: Path, capsys) -> None:
    before = config_file.read_bytes()
    code, _, err = cli(["train", str(config_file), *overrides], capsys)
    user_error(code, err, *expected)
    assert config_file.read_bytes() == before
    assert not (tmp_path / "run" / "artifact").exists()


@pytest.mark.parametrize("metric", ["f1_weird", "confusion_matrix"])
def test_a_train_metric_the_task_does_not_report_stops_at_the_first_evaluation(metric, config_file: Path,
                                                                                  tmp_path: Path, capsys) -> None:
    # the names are known once the task has evaluated: the run stops there, with the names it does report
    code, _, err = cli(["train", str(config_file), f"train.metric={metric}"], capsys)
    last = err.strip().splitlines()[-1]
    user_error(code, last, "train.metric", f"{metric!r} is not among", "accuracy, f1_macro")
    assert not (tmp_path / "run" / "artifact").exists()


BAD_YAML = [
    ("syntax", "model: [unclosed\n", ["not valid YAML"]),
    ("list", "- a\n- b\n", ["top level must be a mapping"]),
    ("python_object", "model: !!python/object/apply:os.system ['mkdir PWNED']\n", ["not valid YAML"]),
    ("nested_unknown", "train:\n  epochz: 2\n", ["train.epochz", "unknown field"]),
    ("section_type", "train: 3\n", ["train"]),
]


@pytest.mark.parametrize("name,content,expected", BAD_YAML, ids=[c[0] for c in BAD_YAML])
def test_bad_yaml_files(name, content, expected, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / f"{name}.yaml"
    path.write_text(content)
    code, _, err = cli(["train", str(path)], capsys)
    user_error(code, err, f"{name}.yaml", *expected)
    assert not (tmp_path / "PWNED").exists()


def test_missing_config_file(tmp_path: Path, capsys) -> None:
    code, _, err = cli(["train", str(tmp_path / "none.yaml")], capsys)
    user_error(code, err, "none.yaml", "does not exist")


def test_output_dir_is_a_file(config_file: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "taken").write_text("mine")
    code, _, err = cli(["train", str(config_file), f"output_dir={tmp_path / 'taken'}"], capsys)
    user_error(code, err, "taken")
    assert (tmp_path / "taken").read_text() == "mine"


@FAST
@given(st.dictionaries(st.sampled_from(["task", "model", "train", "data", "method", "strategy", "epochs", "x"]),
                       st.one_of(st.none(), st.integers(), st.text(max_size=5), st.floats(allow_nan=True),
                                 st.dictionaries(st.text(max_size=8), st.integers(), max_size=3)), max_size=4))
def test_any_config_dict_is_valid_or_a_config_error(data: dict) -> None:
    from tunelab.config import build_config

    try:
        build_config(data)
    except tunelab.ConfigError as err:
        assert str(err).startswith("invalid config")


@FAST
@given(st.lists(st.text(max_size=12), max_size=4))
def test_any_override_strings_parse_or_give_config_errors(pairs: list[str]) -> None:
    from tunelab.config import build_config, parse_overrides

    try:
        build_config({}, dotted=parse_overrides(pairs))
    except tunelab.ConfigError:
        pass


# ---- command-line options ---------------------------------------------------------------------------------------
def test_cli_option_mistakes(artifact: Path, tmp_path: Path, capsys) -> None:
    cases = [
        (["predict", str(tmp_path / "nothing"), "x"], ["does not exist"]),
        (["predict", str(tmp_path), "x"], ["not a tunelab artifact"]),
        (["predict", str(artifact), "--file", str(tmp_path / "no.csv")], ["no.csv", "does not exist"]),
        (["predict", str(artifact), "--stream", "x"], ["stream is for generation"]),
        (["eval", str(artifact), str(tmp_path / "no.csv")], ["no.csv", "does not exist"]),
        (["info", str(tmp_path)], ["not a tunelab artifact"]),
    ]
    for argv, expected in cases:
        code, out, err = cli(argv, capsys)
        user_error(code, err, *expected)
        assert out == ""


@pytest.mark.parametrize("argv", [["predict", "ART", "--batch-size", "0"], ["predict", "ART", "--format", "xlsx"],
                                  ["predict", "ART", "--threads", "many"], ["predict", "ART", "--on-error", "ignore"],
                                  [], ["fly"]])
def test_cli_usage_mistakes_exit_2(argv: list[str], artifact: Path, capsys) -> None:
    argv = [str(artifact) if a == "ART" else a for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and "Traceback" not in err


def test_eval_data_mistakes(artifact: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "unlabelled.csv").write_text("text\nthe film was great\n")
    code, _, err = cli(["eval", str(artifact), str(tmp_path / "unlabelled.csv")], capsys)
    user_error(code, err, "column 'label'")
    (tmp_path / "unknown.csv").write_text("text,label\nthe film was great,meh\n")
    code, _, err = cli(["eval", str(artifact), str(tmp_path / "unknown.csv")], capsys)
    user_error(code, err, "line 2", "unknown label 'meh'")
    (tmp_path / "ok.csv").write_text("text,label\nthe film was great,pos\nthe meal was dull,neg\n")
    code, _, err = cli(["eval", str(artifact), str(tmp_path / "ok.csv"), "--encoding", "nope"], capsys)
    user_error(code, err, "unknown text encoding")


def test_eval_text_output_shows_per_class_scores(artifact: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "ok.csv").write_text("text,label\nthe film was great,pos\nthe meal was dull,neg\n")
    code, out, _ = cli(["eval", str(artifact), str(tmp_path / "ok.csv"), "--threads", "1"], capsys)
    assert code == 0 and "per class:" in out and "pos" in out and "neg" in out


def test_unexpected_errors_say_internal_and_debug_shows_traceback(artifact: Path, capsys, monkeypatch) -> None:
    import tunelab.predictor as predict

    def boom(*args, **kwargs):
        raise RuntimeError("kaboom")
    monkeypatch.setattr(predict.Predictor, "predict", boom)
    code, _, err = cli(["predict", str(artifact), "x"], capsys)
    assert code == 1 and "internal error: RuntimeError: kaboom" in err and "--debug" in err and "Traceback" not in err
    with pytest.raises(RuntimeError):
        main(["predict", str(artifact), "x", "--debug"])


# ---- tampered artifacts ----------------------------------------------------------------------------------------
def _tamper_manifest(art: Path, change) -> None:
    manifest = json.loads((art / "manifest.json").read_text())
    (art / "manifest.json").write_text(json.dumps(change(manifest)) if callable(change) else change)


ARTIFACT_TAMPERING = [
    ("manifest_not_json", lambda a: _tamper_manifest(a, "{not json"), ["manifest.json", "corrupt"]),
    ("manifest_list", lambda a: _tamper_manifest(a, "[1, 2]"), ["manifest.json", "corrupt"]),
    ("format_version", lambda a: _tamper_manifest(a, lambda m: {**m, "format_version": 99}), ["artifact format 99"]),
    ("missing_file", lambda a: _tamper_manifest(a, lambda m: {**m, "files": m["files"] + ["model/extra.bin"]}),
     ["incomplete", "model/extra.bin"]),
    ("path_outside", lambda a: _tamper_manifest(a, lambda m: {**m, "files": m["files"] + ["../../etc/passwd"]}),
     ["outside the artifact"]),
    ("files_type", lambda a: _tamper_manifest(a, lambda m: {**m, "files": "model"}), ["'files'"]),
    ("sha_removed", lambda a: _tamper_manifest(a, lambda m: {**m, "sha256": {k: v for k, v in m["sha256"].items()
                                                                              if not k.startswith("model/")}}),
     ["records no sha256", "model/"]),
    ("sha_type", lambda a: _tamper_manifest(a, lambda m: {**m, "sha256": ["x"]}), ["'sha256'"]),
    ("unknown_task", lambda a: _tamper_manifest(a, lambda m: {**m, "task": {"name": "astrology", "state": {}}}),
     ["unknown task 'astrology'", "TUNELAB_PLUGINS"]),
    ("task_state_missing", lambda a: _tamper_manifest(a, lambda m: {**m, "task": {"name": "classification"}}),
     ["not a valid tunelab manifest"]),
    ("task_wrong_type", lambda a: _tamper_manifest(a, lambda m: {**m, "task": 7}), ["'task'"]),
    ("unknown_strategy", lambda a: _tamper_manifest(a, lambda m: {**m, "strategy": "oracle"}),
     ["unknown strategy 'oracle'"]),
    ("prompt_state_missing", lambda a: _tamper_manifest(a, lambda m: {**m, "strategy": "zero_shot",
                                                                      "task": {"name": "classification", "state": {}}}),
     ["not a valid tunelab manifest"]),
    ("weights_bit_flip", lambda a: _flip(a / "model" / "model.safetensors"), ["model.safetensors", "has changed"]),
    ("weights_truncated", lambda a: _truncate(a / "model" / "model.safetensors"), ["model.safetensors", "has changed"]),
    ("tokenizer_removed", lambda a: shutil.rmtree(a / "tokenizer"), ["incomplete", "tokenizer/"]),
    ("manifest_removed", lambda a: (a / "manifest.json").unlink(), ["not a tunelab artifact"]),
]


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1000])


@pytest.mark.parametrize("name,tamper,expected", ARTIFACT_TAMPERING, ids=[c[0] for c in ARTIFACT_TAMPERING])
def test_tampered_artifacts_are_refused_by_name(name, tamper, expected, artifact: Path, tmp_path: Path, capsys) -> None:
    art = tmp_path / "artifact"
    shutil.copytree(artifact, art)
    tamper(art)
    code, out, err = cli(["predict", str(art), "the film was great"], capsys)
    user_error(code, err, *expected)
    assert out == ""


# ---- checkpoints -------------------------------------------------------------------------------------------------
def _torch_save(obj):
    def write(path: Path) -> None:
        import torch

        torch.save(obj, path)
    return write


CHECKPOINTS = [
    ("garbage", lambda p: p.write_bytes(os.urandom(2048)), ["checkpoint.pt"]),
    ("empty", lambda p: p.write_bytes(b""), ["checkpoint.pt"]),
    ("text", lambda p: p.write_text("hello"), ["checkpoint.pt"]),
    ("missing_fields", _torch_save({"model": {}}), ["checkpoint.pt", "missing fields"]),
    ("not_a_dict", _torch_save([1, 2, 3]), ["checkpoint.pt", "missing fields"]),
]


@pytest.mark.parametrize("name,write,expected", CHECKPOINTS, ids=[c[0] for c in CHECKPOINTS])
def test_bad_checkpoints_are_refused_by_name(name, write, expected, config_file: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "run").mkdir()
    write(tmp_path / "run" / "checkpoint.pt")
    code, _, err = cli(["train", str(config_file), "train.resume=true"], capsys)
    user_error(code, err, *expected)
    assert (tmp_path / "run" / "checkpoint.pt").exists()  # kept for the user to look at


# ---- faults: kills, concurrency, full disks ------------------------------------------------------------------
def test_concurrent_run_into_the_same_output_dir_is_refused(tiny_bert: Path, tmp_path: Path) -> None:
    from tunelab.rundir import RunDirBusyError, claim_run_dir

    with claim_run_dir(tmp_path / "run"):
        with pytest.raises(RunDirBusyError, match=rf"process {os.getpid()}.*output_dir"):
            tunelab.fit(tiny_config(tiny_bert, tmp_path / "run", epochs=1), train=sentiment_rows(40))
    tunelab.fit(tiny_config(tiny_bert, tmp_path / "run", epochs=1), train=sentiment_rows(40))  # free again


def test_disk_full_while_saving_keeps_the_previous_artifact(tiny_bert: Path, tmp_path: Path, monkeypatch) -> None:
    import tunelab.api as api

    cfg = tiny_config(tiny_bert, tmp_path / "run", epochs=1)
    tunelab.fit(cfg, train=sentiment_rows(40))
    before = (tmp_path / "run" / "artifact" / "manifest.json").read_text()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(api, "write_json", full)
    with pytest.raises(tunelab.TunelabError, match=r"no space left.*needs about \d+ MB.*checkpoint_every"):
        tunelab.fit(cfg, train=sentiment_rows(40))
    assert (tmp_path / "run" / "artifact" / "manifest.json").read_text() == before
    assert not list((tmp_path / "run").glob(".artifact.tmp-*"))
    tunelab.Predictor.load(tmp_path / "run").predict(["fine"])


def test_disk_full_while_checkpointing_is_a_clear_error(tiny_bert: Path, tmp_path: Path, monkeypatch) -> None:
    import tunelab.checkpoint as checkpoint

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(checkpoint.torch, "save", full)
    with pytest.raises(tunelab.TunelabError, match=r"no space left.*saving the checkpoint"):
        tunelab.fit(tiny_config(tiny_bert, tmp_path / "run", epochs=1, checkpoint_every=2), train=sentiment_rows(40))
    assert not list((tmp_path / "run").glob(".checkpoint-*.tmp"))


def test_leftovers_of_killed_saves_are_cleaned_and_a_stranded_artifact_recovered(artifact: Path, tmp_path: Path) -> None:
    from tunelab.rundir import tidy_run_dir

    run = tmp_path / "run"
    (run / ".artifact.tmp-abc" / "model").mkdir(parents=True)
    (run / ".artifact.tmp-abc" / "model" / "w.bin").write_bytes(b"0" * 1000)
    (run / ".checkpoint-xyz.tmp").write_bytes(b"partial")
    (run / ".artifact.old-q").mkdir()
    shutil.copytree(artifact, run / ".artifact.old-q" / "previous")  # a crash between the two renames
    actions = tidy_run_dir(run)
    assert sorted(p.name for p in run.iterdir()) == ["artifact"]
    assert any("recovered" in a for a in actions) and sum("removed" in a for a in actions) == 2
    tunelab.Predictor.load(run).predict(["fine"])


@pytest.mark.slow
def test_sigkill_while_saving_leaves_a_loadable_state(tiny_bert: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_bert, tmp_path / "run", epochs=1)
    child = ("import json, os, signal, sys\nimport tunelab, tunelab.api as api\nfrom conftest import sentiment_rows\n"
             "orig = api.write_yaml\n"
             "def die(*a, **k):\n    orig(*a, **k)\n    os.kill(os.getpid(), signal.SIGKILL)\n"
             "api.write_yaml = die\n"
             f"tunelab.fit(json.loads({json.dumps(json.dumps(cfg))}), train=sentiment_rows(40))\n")
    done = subprocess.run([sys.executable, "-c", child], cwd=HERE, capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL
    assert list((tmp_path / "run").glob(".artifact.tmp-*")) and not (tmp_path / "run" / "artifact").exists()
    run = tunelab.fit(cfg, train=sentiment_rows(40))  # the next run cleans up and says so
    assert not list((tmp_path / "run").glob(".artifact.tmp-*"))
    assert run.artifact_dir.is_dir()


@pytest.mark.slow
def test_sigkill_at_a_random_moment_of_training_then_resume(tiny_bert: Path, tmp_path: Path) -> None:
    import random

    cfg = tiny_config(tiny_bert, tmp_path / "run", epochs=4, checkpoint_every=1, resume=True)
    script = (f"import json, tunelab\nfrom conftest import sentiment_rows\n"
              f"tunelab.fit(json.loads({json.dumps(json.dumps(cfg))}), train=sentiment_rows(160))\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=HERE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(random.Random().uniform(4.0, 9.0))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    run = tunelab.fit(cfg, train=sentiment_rows(160))  # resumes from whatever the kill left, or finishes afresh
    assert run.train.steps == 72  # 144 training rows (16 split off for validation), batch 8, 4 epochs
    assert tunelab.Predictor.load(run.artifact_dir).predict(["fine"])[0]["label"] in ("pos", "neg")


# ---- prediction inputs -----------------------------------------------------------------------------------------
@FAST
@given(st.lists(st.one_of(st.text(max_size=30), st.sampled_from(["", " ", "\t", "the film was great", "ሰላም"])),
                min_size=1, max_size=12))
def test_one_output_per_input_in_order(artifact_predictor, texts: list[str]) -> None:
    out = artifact_predictor.predict(texts, on_error="record", batch_size=4)
    assert len(out) == len(texts)
    for text, pred in zip(texts, out):
        assert ("error" in pred) == (not text.strip()), (text, pred)


@pytest.fixture(scope="module")
def artifact_predictor(artifact: Path):
    return tunelab.Predictor.load(artifact)


@FAST
@given(st.lists(st.tuples(st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\x00"),
                                  min_size=1, max_size=20).filter(lambda t: t.strip()),
                          st.sampled_from(["pos", "neg"])), min_size=1, max_size=8))
def test_csv_written_by_the_csv_module_reads_back_exactly(tmp_path_factory, rows) -> None:
    path = tmp_path_factory.mktemp("csv") / "rows.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    try:
        records = tunelab.data.read_records(path)
    except tunelab.DataError as err:  # only a text that itself looks like whole records on a new line
        assert "quote" in str(err)
        return
    assert [(r["text"], r["label"]) for r in records.rows] == rows


def test_predict_threads_flag_sets_torch_threads(artifact: Path, capsys) -> None:
    import torch

    before = torch.get_num_threads()
    try:
        code, out, _ = cli(["predict", str(artifact), "--threads", "1", "the film was great"], capsys)
        assert code == 0 and torch.get_num_threads() == 1 and json.loads(out)["row"] == 1
    finally:
        torch.set_num_threads(before)


# ---- silent surprises on new data ------------------------------------------------------------------------------
def test_auto_strategy_weighs_the_whole_data(tiny_bert: Path) -> None:
    from tunelab.config import build_config
    from tunelab.data import read_records
    from tunelab.strategies import choose_strategy

    rows = [{"text": f"t{i}", "label": f"c{i % 14}"} for i in range(2987)] + [{"text": "r", "label": "rare"}] * 13
    strategy, reason = choose_strategy(build_config({}), read_records(rows), tiny_bert)
    assert strategy == "finetune" and "3,000 labelled examples in 15 classes" in reason


def test_unknown_token_rate_is_reported_and_warned(tiny_bert: Path, tmp_path: Path, capsys) -> None:
    rows = [{"text": "ሰላም ዓለም ሰላም", "label": "a"}, {"text": "ዓለም ሰላም", "label": "b"}] * 10
    run = tunelab.fit(tiny_config(tiny_bert, tmp_path / "run", epochs=1), train=rows)
    err = capsys.readouterr().err
    assert "unknown-token rate" in err and "warning:" in err and "unknown to the tokenizer" in err
    assert json.loads((run.artifact_dir / "metrics.json").read_text())["unknown_token_rate"] > 0.5


def test_ner_prediction_splits_words_as_the_training_data_did(tiny_bert: Path, tmp_path: Path) -> None:
    rows = [{"tokens": ["@alice", "met", "#paris", "in", "New-York", "."], "tags": ["B-PER", "O", "B-LOC", "O", "B-LOC", "O"]}] * 12
    run = tunelab.fit(tiny_config(tiny_bert, tmp_path / "run", epochs=1, batch_size=4), train=rows, task="ner")
    assert run.live.task.state["entity_counts"] == {"LOC": 22, "PER": 11}  # 11 training records, 3 entities each
    pred = tunelab.Predictor.load(run.artifact_dir).predict(["@bob saw #rome and New-York."])[0]
    assert pred["words"] == ["@bob", "saw", "#rome", "and", "New-York", "."]


def test_entity_counts_count_entities_and_label_counts_exclude_validation(tiny_bert: Path, tmp_path: Path) -> None:
    rows = [{"tokens": ["Peter", "Blackburn", "met", "Ann"], "tags": ["B-PER", "I-PER", "O", "B-PER"]}] * 10
    run = tunelab.fit(tiny_config(tiny_bert, tmp_path / "ner", epochs=1), train=rows, task="ner")
    assert run.live.task.state["entity_counts"] == {"PER": 2 * 9}  # 9 training records (1 validation), 2 entities each
    run = tunelab.fit(tiny_config(tiny_bert, tmp_path / "cls", epochs=1), train=sentiment_rows(40))
    assert sum(run.live.task.state["label_counts"].values()) == 36


def test_info_on_a_full_artifact_lists_no_lora_settings(artifact: Path, capsys) -> None:
    code, out, _ = cli(["info", str(artifact)], capsys)
    assert code == 0 and json.loads(out)["method"] == {"name": "full", "train_word_embeddings": True,
                                                          "freeze_layers": 0}
