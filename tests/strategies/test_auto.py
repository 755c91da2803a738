"""``strategy: auto``: the strategy follows the labelled data and the model."""

from __future__ import annotations

from pathlib import Path

from conftest import sentiment_rows


def test_auto_strategy_follows_data_and_model(tiny_llama: Path, tiny_bert: Path, tmp_path: Path) -> None:
    from tunelab.config import build_config
    from tunelab.data import read_records
    from tunelab.strategies import choose_strategy

    few = read_records(sentiment_rows(16))
    many = read_records(sentiment_rows(80))
    cfg = build_config({})
    assert choose_strategy(cfg, None, tiny_llama)[0] == "zero_shot"
    assert choose_strategy(cfg, None, tiny_bert)[0] == "finetune"  # -> "no training data" error, not a prompt error
    assert choose_strategy(cfg, few, tiny_bert)[0] == "setfit"
    assert choose_strategy(cfg, few, tiny_llama)[0] == "few_shot"
    assert choose_strategy(cfg, many, tiny_bert)[0] == "finetune"
    assert choose_strategy(build_config({"strategy": "finetune"}), few, tiny_bert)[0] == "finetune"
