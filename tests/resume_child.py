"""Child process for the kill-and-resume test: trains, and SIGKILLs itself right after the checkpoint
of step ``kill_at`` is written (a real hard kill, at a deterministic point)."""

import json
import os
import signal
import sys

import tunelab
import tunelab.train as loop

from conftest import sentiment_rows

config, kill_at, result_path = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
original_save = loop.save_checkpoint


def save_then_maybe_die(run_dir, payload):
    path = original_save(run_dir, payload)
    if kill_at and payload["loop"]["step"] >= kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return path


loop.save_checkpoint = save_then_maybe_die
run = tunelab.fit(config, train=sentiment_rows(72, seed=4))
with open(result_path, "w") as f:
    json.dump({"metrics": tunelab.metrics.scalar_metrics(run.metrics),
               "losses": [h["loss"] for h in run.train.history], "steps": run.train.steps}, f)
