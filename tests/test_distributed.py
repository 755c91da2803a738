"""Distributed data parallel (tunelab train --nproc, torchrun): two processes follow the one-process loss curve on
the same global batch, only rank 0 writes, and a worker killed mid-training is restarted and resumes from the last
checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import tunelab
from tunelab.cli import main
from tunelab.distributed import RankStream, launch_command, shard

from conftest import sentiment_rows, tiny_config

pytestmark = pytest.mark.slow


def write_run(tmp_path: Path, tiny_bert: Path, name: str, rows: int = 40, **train: object) -> tuple[Path, dict]:
    data = tmp_path / "train.jsonl"
    if not data.exists():
        data.write_text("".join(json.dumps(r) + "\n" for r in sentiment_rows(rows)), encoding="utf-8")
        (tmp_path / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sentiment_rows(12, seed=4)),
                                            encoding="utf-8")
    config = tiny_config(tiny_bert, tmp_path / name, **{"dropout": 0.0, **train})
    config["data"].update(train=str(data), validation=str(tmp_path / "val.jsonl"))
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path, config


def tunelab_cli(*args: str, **kwargs: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "tunelab", *args], capture_output=True, text=True, env=env,
                          timeout=300, **kwargs)


def history(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "artifact" / "history.json").read_text())["steps"]


@pytest.mark.parametrize("train", [{"batch_size": 8}, {"batch_size": 5, "grad_accum_steps": 2}],
                         ids=["batch8", "batch5-accum2"])
def test_two_processes_follow_the_one_process_loss_curve(tmp_path: Path, tiny_bert: Path, train: dict) -> None:
    path, config = write_run(tmp_path, tiny_bert, "two", **train)
    result = tunelab_cli("train", str(path), "--nproc", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("artifact:") == 1  # rank 0 alone prints the summary
    one = tunelab.fit({**config, "output_dir": str(tmp_path / "one")})
    two, single = history(tmp_path / "two"), history(tmp_path / "one")
    assert len(two) == len(single) == one.train.steps
    for a, b in zip(two, single):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3, abs=1e-6)
        assert a["lr"] == pytest.approx(b["lr"])
    manifest = json.loads((tmp_path / "two" / "artifact" / "manifest.json").read_text())
    assert manifest["metrics"]["validation"]["accuracy"] == pytest.approx(one.metrics["accuracy"])
    assert sorted(p.name for p in (tmp_path / "two").iterdir() if not p.name.startswith(".")) == ["artifact"]
    if train["batch_size"] == 8:  # accelerate's launcher (torchrun underneath; --cpu would start one process)
        accelerate = Path(sys.executable).with_name("accelerate")
        result = subprocess.run([str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                                 "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "tunelab", "train", str(path),
                                 f"output_dir={tmp_path / 'accelerate'}"], capture_output=True, text=True, timeout=300,
                                env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"})
        assert result.returncode == 0, result.stderr[-3000:]
        assert "[rank 1]" in result.stderr
        for a, b in zip(history(tmp_path / "accelerate"), single):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)


def test_sharded_training_follows_the_data_parallel_curve_and_saves_the_whole_model(tmp_path: Path,
                                                                                    tiny_bert: Path) -> None:
    # batch 5 as 3 + 2 over an accumulation window of 2, with the weight average: every part of the loop sharded
    path, config = write_run(tmp_path, tiny_bert, "fsdp", batch_size=5, grad_accum_steps=2, ema_decay=0.9)
    for run, sharding in (("fsdp", "fsdp"), ("ddp", "none")):
        result = tunelab_cli("train", str(path), "--nproc", "2", f"train.sharding={sharding}", f"output_dir={tmp_path / run}")
        assert result.returncode == 0, result.stderr[-3000:]
    one = tunelab.fit({**config, "output_dir": str(tmp_path / "one")})
    sharded, ddp, single = history(tmp_path / "fsdp"), history(tmp_path / "ddp"), history(tmp_path / "one")
    assert len(sharded) == len(ddp) == len(single) == one.train.steps
    for a, b, c in zip(sharded, ddp, single):
        # the gradient norm of a nearly-cancelling first step is sensitive to how the two halves are summed: the
        # sharded run matches data parallel on it closely, and one process in the loss
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4, abs=1e-7)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-7)
        assert a["loss"] == pytest.approx(c["loss"], rel=1e-4, abs=1e-6)
    metrics = json.loads((tmp_path / "fsdp" / "artifact" / "metrics.json").read_text())
    # the embeddings, two BertLayers (the model's _no_split_modules) and the model around them
    assert {k: metrics["sharding"][k] for k in ("engine", "processes", "units")} == {"engine": "fsdp", "processes": 2,
                                                                                  "units": 4}
    # each process holds about half the weights, gradients and optimizer state
    assert 0.45 < metrics["sharding"]["state_mb_per_process"] / metrics["sharding"]["state_mb_whole"] < 0.55
    assert metrics["validation"]["accuracy"] == pytest.approx(one.metrics["accuracy"])
    # the artifact holds the whole trained model, loadable without any process group, predicting as one process does
    loaded = tunelab.Predictor.load(tmp_path / "fsdp")
    texts = [r["text"] for r in sentiment_rows(6, seed=9)]
    for got, want in zip(loaded.predict(texts), one.live.predict(texts)):
        assert got["scores"] == pytest.approx(want["scores"], abs=1e-4)
    # accelerate's own flags ask for the same sharding, its layer choice honoured
    accelerate = Path(sys.executable).with_name("accelerate")
    result = subprocess.run([str(accelerate), "launch", "--use_fsdp", "--fsdp_version", "2",
                             "--fsdp_transformer_layer_cls_to_wrap", "BertLayer", "--num_processes", "2",
                             "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m",
                             "tunelab", "train", str(path), f"output_dir={tmp_path / 'accelerate'}"],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr[-3000:]
    via_accelerate = json.loads((tmp_path / "accelerate" / "artifact" / "metrics.json").read_text())
    assert via_accelerate["sharding"]["units"] == 3  # the two BertLayers and the model
    for a, b in zip(history(tmp_path / "accelerate"), ddp):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-7)


def test_a_sharded_causal_lm_with_tied_embeddings_trains_lora_and_generates_like_data_parallel(
        tmp_path: Path, tiny_llama: Path) -> None:
    rows = [{"text": f"the {a} ate the {b}", "target": f"{a} ate"} for a in ("cat", "dog", "fox", "owl")
            for b in ("fish", "cake", "seed", "rice", "corn")]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = {"task": {"name": "summarization", "eval_generate": 2}, "model": str(tiny_llama), "strategy": "finetune",
              "data": {"train": str(data), "max_length": 64}, "generate": {"max_new_tokens": 6},
              "method": {"name": "lora", "r": 8, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
              "train": {"epochs": 2, "batch_size": 8, "learning_rate": 1e-2, "seed": 1, "dropout": 0.0}}
    path = tmp_path / "lm.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    for run, sharding in (("fsdp", "fsdp"), ("ddp", "none")):
        result = tunelab_cli("train", str(path), "--nproc", "2", f"train.sharding={sharding}", f"output_dir={tmp_path / run}")
        assert result.returncode == 0, result.stderr[-3000:]
    sharded, ddp = history(tmp_path / "fsdp"), history(tmp_path / "ddp")
    assert len(sharded) == len(ddp) > 0
    for a, b in zip(sharded, ddp):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3, abs=1e-6)
    metrics = json.loads((tmp_path / "fsdp" / "artifact" / "metrics.json").read_text())
    assert metrics["sharding"]["units"] == 3  # two decoder layers; the tied embedding and LM head in the outer unit
    texts = ["the cat ate the rice", "the owl ate the corn"]
    got = [o["text"] for o in tunelab.Predictor.load(tmp_path / "fsdp").predict(texts)]
    assert got == [o["text"] for o in tunelab.Predictor.load(tmp_path / "ddp").predict(texts)]


def test_sharding_refuses_training_hooks_by_name(tmp_path: Path, tiny_bert: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from tunelab.errors import ConfigError

    monkeypatch.setenv("WORLD_SIZE", "2")  # rank 0 of a two-process launch: refused before any process group
    monkeypatch.setenv("RANK", "0")
    config = tiny_config(tiny_bert, tmp_path / "hooks", sharding="fsdp", adversarial={"epsilon": 0.1})
    with pytest.raises(ConfigError, match=r"train.sharding=fsdp does not combine with training hooks "
                                          r"\(AdversarialTraining\)"):
        tunelab.fit(config, train=sentiment_rows(16))
    assert not (tmp_path / "hooks" / "artifact").exists()


def test_a_killed_sharded_run_resumes_from_its_checkpoint_on_two_processes_or_one(tmp_path: Path,
                                                                                  tiny_bert: Path) -> None:
    path, config = write_run(tmp_path, tiny_bert, "fsdp", rows=80, epochs=10, checkpoint_every=10, eval_every=50,
                             ema_decay=0.9, sharding="fsdp")
    kill_launch(launch_until_checkpoint(path, tmp_path / "fsdp" / "checkpoint.pt"))  # at once, as a lost machine
    shutil.copytree(tmp_path / "fsdp", tmp_path / "fsdp-on-one")
    reference = tunelab.fit({**config, "output_dir": str(tmp_path / "one"), "train": {**config["train"],
                                                                                       "sharding": "none"}})
    for run, nproc in (("fsdp", "2"), ("fsdp-on-one", "1")):
        again = tunelab_cli("train", str(path), "--nproc", nproc, f"output_dir={tmp_path / run}", "train.resume=true")
        assert again.returncode == 0, again.stderr[-3000:]
        assert "resuming from" in again.stderr
        steps = history(tmp_path / run)
        assert len(steps) == reference.train.steps
        for a, b in zip(steps, reference.train.history):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)
        saved = json.loads((tmp_path / run / "artifact" / "metrics.json").read_text())
        assert saved["validation"]["accuracy"] == pytest.approx(reference.metrics["accuracy"])


def test_a_killed_worker_is_restarted_and_resumes_from_the_checkpoint(tmp_path: Path, tiny_bert: Path) -> None:
    path, _ = write_run(tmp_path, tiny_bert, "elastic", rows=160, epochs=10, checkpoint_every=10, eval_every=400)
    checkpoint = tmp_path / "elastic" / "checkpoint.pt"
    proc = launch_until_checkpoint(path, checkpoint, "--max-restarts", "1")
    try:
        victim = worker_with_rank(proc.pid, 1)
        os.kill(victim, signal.SIGKILL)
        out, err = proc.communicate(timeout=600)
    finally:  # a failure here must not leave torchrun and its workers behind
        for pid in [*descendants(proc.pid), proc.pid] if proc.poll() is None else []:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert proc.returncode == 0, err[-3000:]
    assert "the workers were restarted after a failure: resuming from" in err
    steps = history(tmp_path / "elastic")
    assert steps[-1]["step"] == 10 * 160 // 8 and [s["step"] for s in steps] == list(range(1, len(steps) + 1))
    assert not checkpoint.exists()  # the finished run removed it


def launch_until_checkpoint(path: Path, checkpoint: Path, *extra: str) -> subprocess.Popen:
    """``tunelab train PATH --nproc 2 EXTRA`` started and running until ``checkpoint`` exists (the launch is killed
    and the test fails when it does not appear)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "tunelab", "train", str(path), "--nproc", "2", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 240
    while not checkpoint.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    if not checkpoint.exists():
        kill_launch(proc)
        raise AssertionError("no checkpoint was written")
    return proc


def kill_launch(proc: subprocess.Popen) -> None:
    """SIGKILL torchrun and every worker under it, and wait for it."""
    for pid in [*descendants(proc.pid), proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.communicate()


def worker_with_rank(root: int, rank: int) -> int:
    """The process id of the worker with ``RANK=rank`` among ``root``'s descendants."""
    for _ in range(100):
        for pid in descendants(root):
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in environ and b"LOCAL_RANK=" + str(rank).encode() in environ:
                return pid
        time.sleep(0.1)
    raise AssertionError(f"no worker with rank {rank}")


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def test_the_launcher_builds_torchrun_commands() -> None:
    single = launch_command(["c.yaml", "train.epochs=1"], nproc=2)
    assert single[1:] == ["-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone", "-m", "tunelab",
                          "train", "c.yaml", "train.epochs=1"]
    multi = launch_command(["c.yaml"], nproc=4, nnodes=2, node_rank=1, rdzv_endpoint="head:29500", max_restarts=2)
    assert multi[3:] == ["--nproc-per-node", "4", "--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint",
                         "head:29500", "--node-rank", "1", "--max-restarts", "2", "-m", "tunelab", "train", "c.yaml"]
    assert shard(list(range(5)), 0, 2) == [0, 2, 4] and shard(list(range(5)), 1, 2) == [1, 3]


def test_bad_launches_are_refused(tmp_path: Path, tiny_bert: Path, capsys: pytest.CaptureFixture,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = write_run(tmp_path, tiny_bert, "bad")
    assert main(["train", str(path), "--nnodes", "2"]) == 2
    assert "--nnodes > 1 needs --rdzv-endpoint" in capsys.readouterr().err
    assert main(["train", str(path), "--nproc", "2", "train.epochs=0"]) == 2
    assert "train.epochs" in capsys.readouterr().err  # named once, before any process starts
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["train", str(path), "--nproc", "2"]) == 2
    assert "already part of one" in capsys.readouterr().err


def test_other_ranks_mark_their_lines() -> None:
    class Sink:
        text = ""

        def write(self, t: str) -> None:
            self.text += t

        def flush(self) -> None:
            pass

    sink = Sink()
    stream = RankStream(sink, 1)
    stream.write("error: x\nsecond ")
    stream.write("part\n")
    assert sink.text == "[rank 1] error: x\n[rank 1] second part\n"


@pytest.mark.parametrize("variable, engine", [("ACCELERATE_USE_DEEPSPEED", "DeepSpeed"),
                                              ("ACCELERATE_USE_MEGATRON_LM", "Megatron-LM")])
def test_a_launch_asking_accelerate_for_another_engine_is_refused_by_name(variable: str, engine: str, tmp_path: Path,
                                                                          tiny_bert: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import tunelab
    from tunelab.errors import ConfigError

    monkeypatch.setenv(variable, "true")  # what `accelerate launch --use_deepspeed` / `--use_megatron_lm` exports
    with pytest.raises(ConfigError, match=rf"{engine} was asked for \({variable}=true.*train.sharding=fsdp"):
        tunelab.fit(tiny_config(tiny_bert, tmp_path / "run"), train=sentiment_rows(16))
    assert not (tmp_path / "run" / "artifact").exists()
    monkeypatch.setenv(variable, "false")  # accelerate's own "off" value trains as usual
    assert tunelab.fit(tiny_config(tiny_bert, tmp_path / "ok", epochs=1), train=sentiment_rows(16)).artifact_dir.exists()


class Block(torch.nn.Module):
    def __init__(self, embedding: torch.nn.Embedding | None = None):
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)
        self.embedding = embedding


class Tiny(torch.nn.Module):
    _no_split_modules = ["Block"]

    def __init__(self):
        super().__init__()
        self.embedding = torch.nn.Embedding(10, 4)
        self.blocks = torch.nn.ModuleList([Block(), Block(), Block(self.embedding)])


def test_the_units_are_the_declared_layers_that_share_no_weight_with_the_rest() -> None:
    from tunelab.errors import ConfigError
    from tunelab.sharding import shard_units

    model = Tiny()
    # the third block holds the model's embedding (tied): it stays with the model's own unit
    assert shard_units(model) == ["blocks.0", "blocks.1"]
    assert shard_units(model, ["Linear"]) == ["blocks.0.linear", "blocks.1.linear", "blocks.2.linear"]
    with pytest.raises(ConfigError, match=r"FSDP_TRANSFORMER_CLS_TO_WRAP names \['BertLayer'\].*Block"):
        shard_units(model, ["BertLayer"])


def test_sharding_is_asked_for_by_the_config_or_by_accelerate() -> None:
    from tunelab.sharding import sharding_request

    assert sharding_request("none", {}) is None
    assert sharding_request("none", {"ACCELERATE_USE_FSDP": "false"}) is None
    plain = sharding_request("fsdp", {})
    assert plain is not None and plain.layer_classes is None and plain.reshard_after_forward and not plain.offload
    from_accelerate = sharding_request("none", {"ACCELERATE_USE_FSDP": "true", "FSDP_RESHARD_AFTER_FORWARD": "false",
                                                "FSDP_TRANSFORMER_CLS_TO_WRAP": "BertLayer, BertEmbeddings",
                                                "FSDP_OFFLOAD_PARAMS": "true"})
    assert from_accelerate is not None and from_accelerate.layer_classes == ["BertLayer", "BertEmbeddings"]
    assert not from_accelerate.reshard_after_forward and from_accelerate.offload
    assert "--use_fsdp" in from_accelerate.source
