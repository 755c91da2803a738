"""The training loop's promises: exact resume after SIGKILL, correct accumulation, determinism, guards."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tunelab
from tunelab.config import build_config
from tunelab.methods import Target
from tunelab.registry import METHODS
from tunelab.train import LoopInputs, train_loop

from conftest import sentiment_rows, tiny_config

HERE = Path(__file__).resolve().parent


def _child(config: dict, kill_at: int, result: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    return subprocess.run([sys.executable, str(HERE / "resume_child.py"), json.dumps(config), str(kill_at), str(result)],
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_sigkill_and_resume_ends_with_identical_metrics(tiny_bert: Path, tmp_path: Path) -> None:
    # with a weight average, whose state the checkpoint must carry too (the plain loop resumes in test_fuzz)
    train = {"epochs": 3, "batch_size": 8, "checkpoint_every": 3, "eval_every": 4, "learning_rate": 2e-3,
             "ema_decay": 0.9}
    straight = tiny_config(tiny_bert, tmp_path / "straight", **train)
    done = _child(straight, 0, tmp_path / "straight.json")
    assert done.returncode == 0, done.stderr

    resumed_cfg = tiny_config(tiny_bert, tmp_path / "killed", **train, resume=True)
    killed = _child(resumed_cfg, 12, tmp_path / "killed.json")  # mid-epoch 2 (64 train rows: 8 steps per epoch)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (tmp_path / "killed" / "checkpoint.pt").is_file() and not (tmp_path / "killed" / "artifact").exists()
    again = _child(resumed_cfg, 0, tmp_path / "killed.json")
    assert again.returncode == 0, again.stderr

    a = json.loads((tmp_path / "straight.json").read_text())
    b = json.loads((tmp_path / "killed.json").read_text())
    assert a["steps"] == b["steps"] == 24
    assert a["losses"] == b["losses"]
    assert a["metrics"] == b["metrics"]


@pytest.mark.slow
def test_rerun_with_same_seed_gives_same_metrics(tiny_bert: Path, tmp_path: Path) -> None:
    runs = [tunelab.fit(tiny_config(tiny_bert, tmp_path / f"r{i}", epochs=1), train=sentiment_rows(40)) for i in range(2)]
    assert [h["loss"] for h in runs[0].train.history] == [h["loss"] for h in runs[1].train.history]
    assert tunelab.metrics.scalar_metrics(runs[0].metrics) == tunelab.metrics.scalar_metrics(runs[1].metrics)


@pytest.mark.slow
def test_gradient_accumulation_is_normalised_over_the_window(tiny_bert: Path, tmp_path: Path) -> None:
    """One SGD step on 10 examples as 1x10, 2x5 or 4+4+2 (accumulated) must give the same update; with
    uneven micro-batches, averaging per micro-batch would not."""
    rows = sentiment_rows(8) + [{"text": "the longest sentence of them all is here today", "label": "pos"}] * 2
    weights = []
    for name, bs, accum in (("one", 10, 1), ("two", 5, 2), ("uneven", 4, 3)):
        cfg = tiny_config(tiny_bert, tmp_path / name, max_steps=1, batch_size=bs, grad_accum_steps=accum,
                          dropout=0.0, group_by_length=False, warmup_ratio=0.0, learning_rate=0.5,
                          optimizer="sgd", weight_decay=0.0, max_grad_norm=None)
        run = tunelab.fit(cfg, train=rows, validation=rows[:2])
        weights.append(run.predictor().model.state_dict())
    from transformers import BertModel

    start = BertModel.from_pretrained(tiny_bert).state_dict()["encoder.layer.0.output.dense.weight"]
    assert not torch.allclose(weights[0]["bert.encoder.layer.0.output.dense.weight"], start)  # the step did move weights
    for other in weights[1:]:
        for key, value in weights[0].items():
            torch.testing.assert_close(other[key], value, rtol=1e-5, atol=1e-6)


def _loop_inputs(tiny_bert: Path, tmp_path: Path, model=None, extra=None, **train) -> LoopInputs:

    from tunelab.data import read_records
    from tunelab.tasks import ClassificationTask

    cfg = build_config({"train": {"batch_size": 8, "epochs": 50, **train}})
    records = read_records(sentiment_rows(16))
    task = ClassificationTask.from_training_data(cfg, records)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    feats = task.encode(records, tok, with_labels=True)
    if model is None:
        model, _ = task.build_model(tiny_bert, dropout=0.0)
    return LoopInputs(model=model, task=task, processor=tok, train_features=feats, val_features=feats[:4],
                      train=cfg.train, learning_rate=1e-3, head_names=["classifier"], run_dir=tmp_path,
                      hooks=extra or [])


def test_nan_loss_stops_with_clear_message(tiny_bert: Path, tmp_path: Path) -> None:
    class NanLoss(tunelab.TrainHook):
        def extra_loss(self, ctx: tunelab.StepContext) -> torch.Tensor:
            return torch.tensor(float("nan"))

    inputs = _loop_inputs(tiny_bert, tmp_path, extra=[NanLoss()])
    with pytest.raises(tunelab.TrainingError, match=r"loss became nan at step 1: lower train.learning_rate"):
        train_loop(inputs)


def test_stuck_loss_stops(tiny_bert: Path, tmp_path: Path) -> None:
    inputs = _loop_inputs(tiny_bert, tmp_path, stuck_patience=10)
    for p in inputs.model.parameters():
        p.requires_grad_(False)
    inputs.model.classifier.bias.requires_grad_(True)
    inputs.model.classifier.bias.register_hook(lambda g: torch.zeros_like(g))  # a head that never learns
    with pytest.raises(tunelab.TrainingError, match="(loss stuck|gradients were zero).* for 10 steps"):
        train_loop(inputs)


def test_no_trainable_parameters_is_an_error() -> None:
    method = build_config({"method": "full"}).method
    with pytest.raises(tunelab.TrainingError, match="no trainable parameters"):
        METHODS.get("full").adapt(torch.nn.Sequential(), method, Target("SEQ_CLS", [], [], 10))


def test_bad_peft_options_are_config_errors(tiny_bert: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_bert, tmp_path / "x")
    cfg["method"] = {"name": "lora", "target_modules": ["no_such_module"]}
    with pytest.raises(tunelab.ConfigError, match="peft could not apply lora"):
        tunelab.fit(cfg, train=sentiment_rows(20))
    cfg["method"] = {"name": "lora", "peft": {"not_a_field": 1}}
    with pytest.raises(tunelab.ConfigError, match="method.peft"):
        tunelab.fit(cfg, train=sentiment_rows(20))


def test_peft_passthrough_reaches_peft(tiny_bert: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_bert, tmp_path / "x", max_steps=2)
    cfg["method"] = {"name": "lora", "peft": {"bias": "lora_only", "use_rslora": True}}
    run = tunelab.fit(cfg, train=sentiment_rows(20))
    adapter = json.loads((run.artifact_dir / "model" / "adapter_config.json").read_text())
    assert adapter["bias"] == "lora_only" and adapter["use_rslora"] is True


@pytest.mark.slow
def test_tensorboard_tracking_is_opt_in(tiny_bert: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "tracked"
    tunelab.fit(tiny_config(tiny_bert, run_dir, max_steps=4, log_every=2, eval_every=2, track="tensorboard"),
                train=sentiment_rows(24))
    assert list(run_dir.rglob("events.out.tfevents*"))
    quiet = tmp_path / "untracked"
    tunelab.fit(tiny_config(tiny_bert, quiet, max_steps=2), train=sentiment_rows(24))
    assert not list(quiet.rglob("events.out.tfevents*"))


def test_mlflow_tracking_without_mlflow_says_what_to_install(tiny_bert: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    try:
        import mlflow  # noqa: F401

        pytest.skip("mlflow is installed here")
    except ImportError:
        pass
    with pytest.raises(tunelab.ConfigError, match=r"pip install 'tunelab\[mlflow\]'"):
        tunelab.fit(tiny_config(tiny_bert, tmp_path / "m", max_steps=2, track="mlflow"), train=sentiment_rows(24))


def test_full_fine_tuning_leaves_word_embeddings_frozen_unless_asked(tiny_bert: Path, tmp_path: Path) -> None:
    """The recommended recipe does not train the word-embedding matrix: the saved artifact keeps the base model's
    rows exactly (no update, no weight decay), while the rest of the encoder trains; asked, the matrix trains too."""
    from safetensors.torch import load_file

    from tunelab.models import resolve_model

    base_weights = {}
    for shard in Path(resolve_model(str(tiny_bert)).path).glob("*.safetensors"):
        base_weights.update(load_file(str(shard)))
    base = next(v for k, v in base_weights.items() if k.endswith("word_embeddings.weight"))
    base_position = next(v for k, v in base_weights.items() if k.endswith("position_embeddings.weight"))
    for train_words in (False, True):
        cfg = tiny_config(tiny_bert, tmp_path / f"w{train_words}", epochs=1)
        cfg["method"] = {"name": "full", "train_word_embeddings": train_words}
        run = tunelab.fit(cfg, train=sentiment_rows(40))
        saved = load_file(str(Path(run.artifact_dir) / "model" / "model.safetensors"))
        words = next(v for k, v in saved.items() if k.endswith("word_embeddings.weight"))
        position = next(v for k, v in saved.items() if k.endswith("position_embeddings.weight"))
        assert torch.equal(words, base) is (not train_words)
        assert not torch.equal(position, base_position)
        assert run.parameters["trainable"] < run.parameters["total"] if not train_words else \
            run.parameters["trainable"] == run.parameters["total"]


def test_word_embeddings_stay_trainable_for_added_tokens_and_tied_outputs() -> None:
    from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

    options = build_config({"method": "full"}).method
    bert = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                    num_attention_heads=2, intermediate_size=32))
    METHODS.get("full").adapt(bert, options, Target("SEQ_CLS", ["classifier"], [], 10))
    assert not bert.get_input_embeddings().weight.requires_grad
    METHODS.get("full").adapt(bert, options, Target("SEQ_CLS", ["classifier"], [48, 49], 10))  # marker tokens
    assert bert.get_input_embeddings().weight.requires_grad
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         num_key_value_heads=2, intermediate_size=32, tie_word_embeddings=True))
    METHODS.get("full").adapt(llama, options, Target("CAUSAL_LM", [], [], 10))
    assert llama.get_input_embeddings().weight.requires_grad  # it is also the output layer


def test_freeze_layers_stops_the_backward_pass_above_the_bottom_layers(tiny_bert: Path, tmp_path: Path) -> None:
    """method.freeze_layers: N freezes the embeddings and layers 0..N-1 (the saved weights equal the base model's)
    while the layers above and the head train; impossible requests are config errors naming the field."""
    from safetensors.torch import load_file
    from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

    from tunelab.models import resolve_model

    base = {}
    for shard in Path(resolve_model(str(tiny_bert)).path).glob("*.safetensors"):
        base.update(load_file(str(shard)))
    cfg = tiny_config(tiny_bert, tmp_path / "frozen", epochs=1)
    cfg["method"] = {"name": "full", "freeze_layers": 1}
    run = tunelab.fit(cfg, train=sentiment_rows(40))
    saved = load_file(str(Path(run.artifact_dir) / "model" / "model.safetensors"))
    tail = lambda name: name.split("bert.", 1)[-1]  # noqa: E731  (base checkpoint vs task model names)
    base = {tail(k): v for k, v in base.items()}
    for name, value in saved.items():
        if "embeddings." in name or ".layer.0." in name:
            assert torch.equal(value, base[tail(name)]), name
    assert any(not torch.equal(v, base[tail(k)]) for k, v in saved.items() if ".layer.1." in k)

    options = lambda n: build_config({"method": {"name": "full", "freeze_layers": n}}).method  # noqa: E731
    bert = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3,
                                                    num_attention_heads=2, intermediate_size=32))
    METHODS.get("full").adapt(bert, options(2), Target("SEQ_CLS", ["classifier"], [], 10))
    trainable = {n.split(".")[0] if "layer." not in n else n.split(".")[3] for n, p in bert.named_parameters()
                 if p.requires_grad}
    assert trainable == {"2", "bert", "classifier"}  # layer 2, the pooler and the head
    with pytest.raises(tunelab.ConfigError, match="method.freeze_layers: 3 would freeze all 3 layers"):
        METHODS.get("full").adapt(bert, options(3), Target("SEQ_CLS", ["classifier"], [], 10))
    with pytest.raises(tunelab.ConfigError, match="method.freeze_layers freezes the embeddings"):
        METHODS.get("full").adapt(bert, options(1), Target("SEQ_CLS", ["classifier"], [48], 10))
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                         num_key_value_heads=2, intermediate_size=32))
    METHODS.get("full").adapt(llama, options(1), Target("CAUSAL_LM", [], [], 10))
    assert not llama.model.embed_tokens.weight.requires_grad and not llama.model.layers[0].mlp.up_proj.weight.requires_grad
    assert llama.model.layers[1].mlp.up_proj.weight.requires_grad and llama.model.norm.weight.requires_grad
    tied = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                        num_key_value_heads=2, intermediate_size=32, tie_word_embeddings=True))
    METHODS.get("full").adapt(tied, options(1), Target("CAUSAL_LM", [], [], 10))
    assert tied.lm_head.weight is tied.model.embed_tokens.weight and tied.lm_head.weight.requires_grad  # the output layer
    assert not tied.model.layers[0].mlp.up_proj.weight.requires_grad
    with pytest.raises(tunelab.ConfigError, match="greater than or equal to 0|freeze_layers"):
        build_config({"method": {"name": "full", "freeze_layers": -1}})


def test_the_weight_average_is_what_is_evaluated_kept_and_saved(tiny_bert: Path, tmp_path: Path) -> None:
    """train.ema_decay: the saved model is the exponential moving average of the weights after each step
    (recomputed here from the weights a hook sees), and the evaluations score that average."""
    from safetensors.torch import load_file

    from tunelab.hooks import TrainHook

    class Weights(TrainHook):
        def __init__(self) -> None:
            self.seen: list[dict[str, torch.Tensor]] = []  # the weights after 0, 1, ... steps

        def snapshot(self, model: torch.nn.Module) -> None:
            self.seen.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})

        def before_optimizer_step(self, model: torch.nn.Module, step: int) -> None:
            self.snapshot(model)

        def on_train_end(self, model: torch.nn.Module) -> None:
            self.snapshot(model)

    hook = Weights()
    decay = 0.8
    cfg = tiny_config(tiny_bert, tmp_path / "avg", epochs=2, ema_decay=decay, keep_best=False)
    validation = sentiment_rows(16, seed=9)
    run = tunelab.fit(cfg, train=sentiment_rows(48), validation=validation, hooks=[hook])
    assert len(hook.seen) == run.train.steps + 1
    average = {n: v.clone() for n, v in hook.seen[0].items()}
    for n, weights in enumerate(hook.seen[1:], start=1):
        d = min(decay, (1 + n) / (10 + n))
        for name, value in weights.items():
            average[name] = d * average[name] + (1 - d) * value
    saved = load_file(str(Path(run.artifact_dir) / "model" / "model.safetensors"))
    compared = [name for name in average if name in saved]
    assert len(compared) == len(average)
    for name in compared:
        torch.testing.assert_close(saved[name], average[name], atol=1e-6, rtol=1e-5)
    last = hook.seen[-1]
    assert any(not torch.allclose(saved[n], last[n]) for n in compared)  # the average, not the last weights
    scored = run.train.evals[-1]  # the last evaluation scored the average that was saved
    assert scored["step"] == run.train.steps
    again = tunelab.Predictor.load(run.artifact_dir).evaluate(validation)
    assert tunelab.metrics.scalar_metrics(again) == tunelab.metrics.scalar_metrics(scored["metrics"])
    with pytest.raises(tunelab.ConfigError, match="train.ema_decay"):
        build_config({"train": {"ema_decay": 1.0}})


def test_epochs_follow_the_data_size_when_unset() -> None:
    from tunelab.train import planned_epochs, total_optimizer_steps

    auto = build_config({"train": {"batch_size": 32}}).train
    assert planned_epochs(67349, auto) == 1 and total_optimizer_steps(67349, auto) == 2105
    assert planned_epochs(4000, auto) == 4 and total_optimizer_steps(4000, auto) == 500
    assert planned_epochs(100, auto) == 10  # capped
    assert planned_epochs(4000, build_config({"train": {"epochs": 1}}).train) == 1  # an explicit choice stands
    assert total_optimizer_steps(4000, build_config({"train": {"max_steps": 7}}).train) == 7


def test_a_metric_still_rising_at_the_end_is_reported() -> None:
    from tunelab.train import still_improving

    def evals(*values: float) -> list[dict]:
        return [{"step": 100 * (i + 1), "metrics": {"accuracy": v, "loss": 1 - v}} for i, v in enumerate(values)]

    note = still_improving(evals(0.70, 0.77), "accuracy", True)
    assert note and "0.7000 -> 0.7700" in note and "100 steps" in note
    assert still_improving(evals(0.70, 0.77), "loss", False)  # lower is better: 0.30 -> 0.23
    assert still_improving(evals(0.77,), "accuracy", True) is None  # one evaluation says nothing
    assert still_improving(evals(0.80, 0.802), "accuracy", True) is None  # flat
    assert still_improving(evals(0.85, 0.80, 0.82), "accuracy", True) is None  # not the best
    assert still_improving(evals(0.77, 0.70), "accuracy", True) is None


def test_train_metric_picks_the_kept_weights_in_its_own_direction(tiny_bert: Path, tmp_path: Path) -> None:
    rows = sentiment_rows(48)
    numbers = [{"text": r["text"], "label": 4.0 if r["label"] == "pos" else 1.0} for r in rows]
    for metric, pick in (("mae", min), ("f1_macro", max)):
        cfg = tiny_config(tiny_bert, tmp_path / metric, epochs=3, eval_every=3, metric=metric)
        if metric == "mae":
            cfg["task"] = {"name": "classification", "problem_type": "regression"}
        run = tunelab.fit(cfg, train=numbers if metric == "mae" else rows)
        values = [e["metrics"][metric] for e in run.train.evals]
        assert run.train.metric_name == metric and len(values) >= 4
        assert run.train.best_metric == pick(values)  # the first best one, in this metric's direction
        assert run.train.best_step == run.train.evals[values.index(pick(values))]["step"]
        assert json.loads((run.artifact_dir / "metrics.json").read_text())["primary_metric"] == metric
    with pytest.raises(tunelab.errors.ConfigError, match=r"train.metric: 'f1' is not among .*accuracy.*f1_macro"):
        tunelab.fit(tiny_config(tiny_bert, tmp_path / "bad", epochs=1, metric="f1"), train=rows)
    assert tunelab.metrics.higher_is_better("accuracy") and not tunelab.metrics.higher_is_better("rmse")
