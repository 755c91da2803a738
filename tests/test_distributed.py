"""Distributed data parallel (tunelab train --nproc, torchrun): two processes follow the one-process loss curve on
the same global batch, only rank 0 writes, and a worker killed mid-training is restarted and resumes from the last
checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
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


def test_a_killed_worker_is_restarted_and_resumes_from_the_checkpoint(tmp_path: Path, tiny_bert: Path) -> None:
    path, _ = write_run(tmp_path, tiny_bert, "elastic", rows=160, epochs=10, checkpoint_every=10, eval_every=400)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "tunelab", "train", str(path), "--nproc", "2", "--max-restarts", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    checkpoint = tmp_path / "elastic" / "checkpoint.pt"
    try:
        deadline = time.time() + 240
        while not checkpoint.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert checkpoint.exists(), "no checkpoint was written"
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


@pytest.mark.parametrize("variable, engine", [("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")])
def test_a_launch_asking_accelerate_to_shard_the_model_is_refused_by_name(variable: str, engine: str, tmp_path: Path,
                                                                          tiny_bert: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import tunelab
    from tunelab.errors import ConfigError

    monkeypatch.setenv(variable, "true")  # what `accelerate launch --use_fsdp` / `--use_deepspeed` exports
    with pytest.raises(ConfigError, match=rf"{engine} was asked for \({variable}=true.*--nproc N"):
        tunelab.fit(tiny_config(tiny_bert, tmp_path / "run"), train=sentiment_rows(16))
    assert not (tmp_path / "run" / "artifact").exists()
    monkeypatch.setenv(variable, "false")  # accelerate's own "off" value trains as usual
    assert tunelab.fit(tiny_config(tiny_bert, tmp_path / "ok", epochs=1), train=sentiment_rows(16)).artifact_dir.exists()
