from pathlib import Path

import pytest

import tunelab
from tunelab.config import build_config, load_config, parse_overrides

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml")) + [ROOT / "src" / "tunelab" / "data" / "demo.yaml"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_example_config_loads(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.task.name in ("classification", "ner", "relation", "qa", "summarization", "translation", "dialogue")
    assert cfg.learning_rate > 0


def test_there_are_example_configs() -> None:
    assert len(CONFIGS) >= 4


def test_overrides_map_onto_fields() -> None:
    cfg = load_config(None, ["method.name=full", "train.epochs=2", "train.class_weights=balanced", "method.peft={bias: all}"])
    assert cfg.method.name == "full" and cfg.train.epochs == 2.0
    assert cfg.train.class_weights == "balanced" and cfg.method.peft == {"bias": "all"}


def test_shorthands_and_keyword_overrides() -> None:
    cfg = build_config({"task": "classification", "method": "ia3"}, train__batch_size=4, method__num_virtual_tokens=5)
    assert cfg.method.name == "ia3" and cfg.train.batch_size == 4 and cfg.method.num_virtual_tokens == 5


def test_bad_value_names_field_and_allowed_values() -> None:
    with pytest.raises(tunelab.ConfigError) as err:
        build_config({"method": {"name": "loraa"}})
    text = str(err.value)
    assert "method.name" in text and "'lora'" in text and "'prefix_tuning'" in text and "loraa" in text


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


def test_merge_only_for_lora() -> None:
    with pytest.raises(tunelab.ConfigError, match="merge applies to lora"):
        build_config({"method": {"name": "ia3", "merge": True}})


def test_public_api_is_complete() -> None:
    public = {name for name in dir(tunelab) if not name.startswith("_") and name[0].isupper() or name in ("fit", "evaluate")}
    assert public <= set(tunelab.__all__)
    for name in tunelab.__all__:
        assert hasattr(tunelab, name)
