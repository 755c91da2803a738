from pathlib import Path

import pytest

import tunelab
from tunelab.config import build_config, load_config, parse_overrides

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml")) + [ROOT / "src" / "tunelab" / "_resources" / "demo.yaml"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_example_config_loads(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.task.name in ("classification", "ner", "relation", "qa", "summarization", "translation", "dialogue")
    assert cfg.learning_rate > 0


def test_there_are_example_configs() -> None:
    assert len(CONFIGS) >= 4


def test_overrides_map_onto_fields() -> None:
    cfg = load_config(None, ["method.name=lora", "train.epochs=2", "train.class_weights=balanced", "method.peft={bias: all}"])
    assert cfg.method.name == "lora" and cfg.train.epochs == 2.0
    assert cfg.train.class_weights == "balanced" and cfg.method.peft == {"bias": "all"}


def test_shorthands_and_keyword_overrides() -> None:
    cfg = build_config({"task": "classification", "method": "prompt_tuning"}, train__batch_size=4,
                       method__num_virtual_tokens=5)
    assert cfg.method.name == "prompt_tuning" and cfg.train.batch_size == 4 and cfg.method.num_virtual_tokens == 5


def test_bad_value_names_field_and_allowed_values() -> None:
    with pytest.raises(tunelab.ConfigError) as err:
        build_config({"method": {"name": "loraa"}})
    text = str(err.value)
    assert "method.name: unknown method 'loraa'" in text and "lora, adalora" in text and "prefix_tuning" in text


def test_unknown_field_is_reported() -> None:
    with pytest.raises(tunelab.ConfigError, match=r"train\.epoch: unknown field"):
        build_config({"train": {"epoch": 3}})


def test_out_of_range_value() -> None:
    with pytest.raises(tunelab.ConfigError, match=r"train\.batch_size"):
        load_config(None, ["train.batch_size=0"])


def test_bad_override_syntax() -> None:
    with pytest.raises(tunelab.ConfigError, match="key=value"):
        parse_overrides(["train.epochs"])


def test_bad_yaml_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(tunelab.ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(tunelab.ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_each_method_takes_only_its_own_options() -> None:
    with pytest.raises(tunelab.ConfigError, match=r"method\.merge: unknown field"):
        build_config({"method": {"name": "ia3", "merge": True}})
    with pytest.raises(tunelab.ConfigError, match=r"method\.r: unknown field"):
        build_config({"method": {"name": "full", "r": 4}})
    assert build_config({"method": {"name": "lora", "r": 4}}).method.r == 4


def test_each_task_takes_only_its_own_options_and_columns() -> None:
    with pytest.raises(tunelab.ConfigError, match=r"task\.stride: unknown field"):
        build_config({"task": {"name": "classification", "stride": 4}})
    with pytest.raises(tunelab.ConfigError, match=r"data\.tags_column: unknown field"):
        build_config({"task": "qa", "data": {"tags_column": "t"}})
    cfg = build_config({"task": {"name": "ner", "stride": 4}, "data": {"tags_column": "t"}})
    assert (cfg.task.stride, cfg.data.tags_column) == (4, "t")
    with pytest.raises(tunelab.ConfigError, match=r"task.name: unknown task 'nr'; known: classification, ner"):
        build_config({"task": "nr"})


def test_public_api_is_complete() -> None:
    public = {name for name in dir(tunelab) if not name.startswith("_") and name[0].isupper() or name in ("fit", "evaluate")}
    assert public <= set(tunelab.__all__)
    for name in tunelab.__all__:
        assert hasattr(tunelab, name)
