"""Ray as the cluster engine (``--backend ray``): the same search, training and batch prediction as on one machine,
run by Ray Tune, Ray Train and Ray Data. Nothing here schedules or talks over the network by itself: Ray does.

- ``search_on_ray``: Ray Tune runs the trials of the config's ``search:`` section with Optuna's sampler
  (``OptunaSearch``) and an ASHA scheduler that stops trials whose evaluations fall behind; each trial declares
  its resources (``cpus_per_trial``). The results are written as by ``tunelab search``: ``best.yaml``,
  ``trials.csv``, ``search.json``, the plots, and an Optuna study in ``OUT/study.db`` (``optuna-dashboard``).
- ``train_on_ray``: Ray Train's ``TorchTrainer`` runs tunelab's own loop on N workers; Ray sets up the process
  group (gloo on CPU) and the torch environment, so the loop shards each global batch as under torchrun, rank 0
  writes the artifact, and a restarted worker group resumes from the last checkpoint.
- ``predict_on_ray``: Ray Data reads a file or a directory of files with tunelab's own readers (the same row
  numbers and columns as ``tunelab predict --file``), runs ``map_batches`` over a pool of actors that each hold
  one ``Predictor``, and the driver writes the JSON lines in input order as they arrive.

Where the cluster is: ``address`` (or ``RAY_ADDRESS``, or the cluster ``ray start`` made on this machine); without
one, a local Ray is started for the job and stopped after it. Ray is an optional extra: ``pip install tunelab[ray]``.

Example:
    >>> run = train_on_ray("configs/sst2_full.yaml", workers=2)          # doctest: +SKIP
    >>> result = search_on_ray("sst2_search.yaml", trials=20)            # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import ConfigError, InputError, TunelabError
from .hooks import TrainHook

#: environment every Ray worker gets from a job started here (offline unless the caller allows the network)
WORKER_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "TUNELAB_CACHE", "TOKENIZERS_PARALLELISM")


def require_ray() -> Any:
    """The ``ray`` module, or one clear error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise TunelabError("--backend ray needs Ray, which is not installed: pip install tunelab[ray]") from None
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[Any]:
    """Connect to a Ray cluster for the duration of a job, or start a local one (and stop it after).

    Args:
        address: ``ray://HOST:10001``, ``HOST:6379`` or ``auto``; None: ``RAY_ADDRESS`` or the cluster ``ray start``
            made on this machine if there is one, else a new local Ray.
        num_cpus: CPUs of a new local Ray (default: all).

    A new local Ray (Ray >= 2.60) requires Ray's token (``~/.ray/auth_token``, made by Ray) on every connection;
    its services listen on the machine's interfaces, not only loopback. ``RAY_AUTH_MODE=disabled`` turns the
    token off, and then this says so on stderr.
    """
    ray = require_ray()
    if ray.is_initialized():  # e.g. inside `ray job submit`, or a test's own cluster
        yield ray
        return
    env = {name: os.environ[name] for name in WORKER_ENV if name in os.environ}
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env}, "include_dashboard": False,
                              "log_to_driver": True, "logging_level": "WARNING"}
    if address or os.environ.get("RAY_ADDRESS"):
        kwargs["address"] = address or os.environ["RAY_ADDRESS"]
    else:
        kwargs["num_cpus"] = num_cpus
        if os.environ.get("RAY_AUTH_MODE", "").strip().lower() == "disabled":
            print("warning: RAY_AUTH_MODE=disabled: the local Ray started for this job listens on this machine's "
                  "network interfaces without authentication, and anyone who reaches them can run code as you. "
                  "Unset it to keep Ray's token authentication.", file=sys.stderr, flush=True)
    try:
        ray.init(**kwargs)
    except (ConnectionError, ValueError, RuntimeError) as err:
        raise TunelabError(f"could not reach the Ray cluster at {kwargs.get('address', 'a new local Ray')}: "
                           f"{str(err).splitlines()[0]}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _quiet_ray_data(ray: Any) -> Any:
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # output line N answers input row N
    context.enable_progress_bars = False
    context.issue_detectors_config.detectors = []  # its memory advice is about Ray's own defaults, not the user's job
    # Ray gathers a task's output into blocks of up to 128 MiB: a whole file would reach the actors as one block
    # (one actor busy, nothing written until the end). Small blocks spread the work and stream the output.
    context.target_max_block_size = 1 << 20
    return context


# ---------------------------------------------------------------------------------------------- training
def _train_worker(job: dict[str, Any]) -> None:
    """One Ray Train worker: tunelab's own ``fit`` under the process group Ray made."""
    import ray.train

    from .api import fit
    from .metrics import scalar_metrics

    checkpoint = Path(job["config"]["output_dir"]) / "checkpoint.pt"
    if checkpoint.exists() and checkpoint.stat().st_mtime > job["started"]:
        os.environ["TUNELAB_RESTART_COUNT"] = "1"  # made by this job's earlier attempt: Ray restarted the group
    if job.get("threads"):
        import torch

        torch.set_num_threads(job["threads"])
    run = fit(job["config"], train=job.get("train"), validation=job.get("validation"))
    ray.train.report({"metrics": scalar_metrics(run.metrics), "steps": run.train.steps if run.train else None})


def train_on_ray(config: Any, *, workers: int = 2, cpus_per_worker: int = 1, use_gpu: bool = False,
                 address: str | None = None, max_failures: int = 0, train: Any = None, validation: Any = None,
                 overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train ``config`` with data-parallel workers under Ray Train (``TorchTrainer``).

    Args:
        config: a YAML path, a mapping or a Config (as for ``tunelab.fit``); ``output_dir`` must be reachable by
            every worker (on a cluster: a shared filesystem path).
        workers: training processes; ``train.batch_size`` stays the global batch.
        cpus_per_worker: CPUs Ray reserves for each (also its torch threads).
        use_gpu: one GPU per worker and NCCL between them (default: CPUs and gloo).
        address: the Ray cluster (see ``ray_session``).
        max_failures: times Ray restarts the worker group after a failure; the restart resumes from the last
            checkpoint (set ``train.checkpoint_every``).
        train, validation: records instead of the config's files (sent to the workers through Ray).
        overrides: dotted ``{field: value}`` set on the config.

    Returns:
        ``{"metrics", "artifact_dir", "steps", "workers"}``: the validation metrics and steps of the artifact rank 0 wrote.

    Example:
        >>> train_on_ray("configs/sst2_full.yaml", workers=2, cpus_per_worker=1)   # doctest: +SKIP
    """
    from .config import build_config, load_config

    if workers < 1 or cpus_per_worker < 1:
        raise ConfigError(f"workers and cpus_per_worker must be >= 1, got {workers} and {cpus_per_worker}")
    cfg = load_config(config) if isinstance(config, (str, Path)) else build_config(config)
    if overrides:
        cfg = build_config(cfg.to_dict(), dotted=overrides)
    payload = cfg.to_dict()
    payload["output_dir"] = str(Path(cfg.output_dir).resolve())
    with ray_session(address):
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer

        job = {"config": payload, "started": time.time(), "threads": cpus_per_worker,
               "train": _records_or_none(train), "validation": _records_or_none(validation)}
        trainer = TorchTrainer(
            _train_worker, train_loop_config=job, torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                         resources_per_worker={"CPU": cpus_per_worker}),
            run_config=RunConfig(name="tunelab-train", storage_path=str(Path(payload["output_dir"]).parent / ".ray"),
                                 failure_config=FailureConfig(max_failures=max_failures)))
        try:
            result = trainer.fit()
        except Exception as err:  # Ray Train's TrainingFailedError wraps the worker's own exception
            raise TunelabError(f"Ray Train failed: {_root_cause(err)}") from None
    if result.error is not None:
        raise TunelabError(f"Ray Train failed: {_root_cause(result.error)}")
    # what rank 0 wrote is the result (Ray keeps reported metrics only with checkpoints, which tunelab writes itself)
    artifact = Path(payload["output_dir"]) / "artifact"
    try:
        manifest = json.loads((artifact / "manifest.json").read_text(encoding="utf-8"))
        report = json.loads((artifact / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise TunelabError(f"Ray Train finished but {artifact} is not a complete artifact: {err}") from None
    return {"metrics": manifest["metrics"]["validation"], "artifact_dir": str(artifact),
            "steps": report.get("steps"), "workers": workers}


def _records_or_none(records: Any) -> Any:
    if records is None:
        return None
    from .data import read_records

    return read_records(records)


def _root_cause(err: BaseException) -> str:
    """The innermost message of a Ray error (the worker's own exception), on one line."""
    text = str(err).strip().splitlines()
    tunelab_lines = [line for line in text if "tunelab" in line and "Error" in line and "File " not in line]
    return (tunelab_lines[-1] if tunelab_lines else (text[-1] if text else type(err).__name__)).strip()[:500]


# ---------------------------------------------------------------------------------------------- prediction
def _input_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InputError(f"input {path} does not exist")
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise InputError(f"input directory {path} holds no files")
    return files


class _ReadChunks:
    """Ray Data step 1: one input file -> its records in chunks (tunelab's reader: same rows and numbers)."""

    def __init__(self, format: str, encoding: str, chunk: int):
        self.format, self.encoding, self.chunk = format, encoding, chunk

    def __call__(self, batch: dict[str, Any]) -> Iterator[dict[str, Any]]:
        from .data import iter_records

        for name in batch["path"]:
            for records in iter_records(Path(str(name)), format=self.format, encoding=self.encoding, chunk=self.chunk):
                yield {"source": [str(name)] * len(records), "row": [records.number(i) for i in range(len(records))],
                       "record": [json.dumps(r, ensure_ascii=False, default=str) for r in records.rows],
                       "columns": [json.dumps(records.columns)] * len(records)}


class _PredictLines:
    """Ray Data step 2 (an actor): one ``Predictor``, batches of records -> the JSON lines of their predictions."""

    def __init__(self, artifact: str, batch_size: int, on_error: str, id_column: str, threads: int | None):
        from .predictor import Predictor

        self.predictor = Predictor.load(artifact, threads=threads)
        self.batch_size, self.on_error, self.id_column = batch_size, on_error, id_column

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from .data import Records
        from .predictor import as_own_columns, prediction_line

        lines: list[str] = []
        failed: list[bool] = []
        keys = [(str(s), str(c)) for s, c in zip(batch["source"], batch["columns"])]
        start = 0
        while start < len(keys):  # rows of one file (and one column set) at a time
            end = start
            while end < len(keys) and keys[end] == keys[start]:
                end += 1
            records = Records([json.loads(r) for r in batch["record"][start:end]], keys[start][0],
                              lines=[int(n) for n in batch["row"][start:end]], columns=json.loads(keys[start][1]))
            records = as_own_columns(self.predictor, records)
            for i, pred in enumerate(self.predictor.predict(records, batch_size=self.batch_size, on_error=self.on_error)):
                lines.append(prediction_line(records, i, pred, self.id_column))
                failed.append("error" in pred)
            start = end
        return {"line": lines, "failed": failed}


def predict_on_ray(artifact: str | Path, input: str | Path, handle: Any, *, actors: int = 2,
                   cpus_per_actor: int = 1, batch_size: int = 64, on_error: str = "record", id_column: str = "id",
                   format: str = "auto", encoding: str = "utf-8", chunk: int = 1024,
                   address: str | None = None) -> dict[str, int]:
    """Predict every record of a file (or of every file in a directory, in path order) with a pool of Ray actors.

    Args:
        artifact: the artifact directory (reachable by every actor).
        input: a records file or a directory of them (any format ``tunelab predict --file`` reads).
        handle: where the JSON lines go (an open text file), written in input order as they arrive.
        actors: ``Predictor`` actors working in parallel.
        cpus_per_actor: CPUs Ray reserves for each (also its torch threads).
        batch_size: records per forward pass.
        on_error: ``record`` (an error line in place of a bad input) or ``raise``.
        id_column: the column copied into each line as its id.
        format, encoding: as for ``tunelab.data.read_records``.
        chunk: records per read chunk and per ``map_batches`` call (sorted by length inside it).
        address: the Ray cluster (see ``ray_session``).

    Returns:
        ``{"written": lines, "failed": lines with an error}``.

    Example:
        >>> with open("out.jsonl", "w") as f:                                     # doctest: +SKIP
        ...     predict_on_ray("runs/sst2/artifact", "big.txt", f, actors=4)
    """
    from .artifact import find_artifact

    if actors < 1 or cpus_per_actor < 1:
        raise ConfigError(f"actors and cpus_per_actor must be >= 1, got {actors} and {cpus_per_actor}")
    files = _input_files(Path(input))
    artifact_dir = str(find_artifact(artifact).resolve())
    written = failed = 0
    with ray_session(address) as ray:
        _quiet_ray_data(ray)
        dataset = ray.data.from_items([{"path": str(p.resolve())} for p in files], override_num_blocks=len(files))
        dataset = dataset.map_batches(_ReadChunks, fn_constructor_kwargs={"format": format, "encoding": encoding,
                                                                          "chunk": chunk},
                                      batch_size=1, concurrency=1, num_cpus=0)  # reading leaves the CPUs to actors
        dataset = dataset.map_batches(
            _PredictLines, fn_constructor_kwargs={"artifact": artifact_dir, "batch_size": batch_size,
                                                  "on_error": on_error, "id_column": id_column,
                                                  "threads": cpus_per_actor},
            # a whole read chunk per call: the Predictor length-sorts it into forward passes of batch_size, as the
            # local path does (64-record calls padded every pass to its longest of 64)
            batch_size=chunk, concurrency=actors, num_cpus=cpus_per_actor)
        try:
            for batch in dataset.iter_batches(batch_size=None, batch_format="default"):
                for line, bad in zip(batch["line"], batch["failed"]):
                    handle.write(str(line) + "\n")
                    written += 1
                    failed += bool(bad)
                handle.flush()
        except ray.exceptions.RayError as err:
            raise TunelabError(f"Ray Data prediction failed: {_root_cause(err)}") from None
    return {"written": written, "failed": failed}


# ---------------------------------------------------------------------------------------------- search
class _ReportToTune(TrainHook):
    """A training hook: each evaluation's metric goes to Ray Tune (ASHA decides from these whether to go on)."""

    def __init__(self, metric: str):
        self.metric, self.evaluations = metric, 0

    def on_evaluate(self, step: int, metrics: dict[str, Any]) -> None:
        """Report evaluation number 1, 2, ... (Ray stops the trial here when ASHA says so)."""
        import math

        from ray import tune

        value = metrics.get(self.metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            self.evaluations += 1
            tune.report({self.metric: float(value), "step": step, "final": 0})


class _Suggest:
    """Optuna define-by-run: the same suggestions ``tunelab search`` makes (a class, so Ray can serialize it)."""

    def __init__(self, params: list[Any]):
        self.params = params

    def __call__(self, trial: Any) -> None:
        for param in self.params:
            param.suggest(trial)


def _optuna_search_class() -> type:
    """``OptunaSearch`` that names each trial's folder by its Optuna number, records its artifact, and marks a trial
    ASHA stopped before its end as pruned (Optuna's own meaning), not complete. Made on first use (Ray is optional)
    and kept as a module attribute so Ray can serialize the searcher."""
    if "TunelabOptunaSearch" in globals():
        return globals()["TunelabOptunaSearch"]
    from ray.tune.search.optuna import OptunaSearch

    class TunelabOptunaSearch(OptunaSearch):
        tunelab_out = ""

        def suggest(self, trial_id: str) -> dict[str, Any] | None:
            values = super().suggest(trial_id)
            if isinstance(values, dict):
                values = {**values, "__trial_number": self._ot_trials[trial_id].number}
            return values

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            trial = self._ot_trials.get(trial_id)
            if trial is not None and result:
                for key in ("artifact", "train_seconds", "steps"):
                    if result.get(key) is not None:
                        trial.set_user_attr(key, result[key])
                trial.set_user_attr("output_dir", str(Path(self.tunelab_out) / "trials" / f"{trial.number:03d}"))
                if not result.get("final"):
                    result = None  # stopped by ASHA: pruned
            super().on_trial_complete(trial_id, result, error)

    TunelabOptunaSearch.__module__ = __name__
    globals()["TunelabOptunaSearch"] = TunelabOptunaSearch
    return TunelabOptunaSearch


def _search_trial(values: dict[str, Any], job: dict[str, Any]) -> None:
    """One Ray Tune trial: tunelab's ``fit`` of the base config with the sampled values."""
    from ray import tune

    from .api import fit
    from .search_space import apply

    number = values.pop("__trial_number")
    if job.get("mlflow"):  # every trial one run in the search's own local MLflow store, as without Ray
        os.environ.setdefault("MLFLOW_TRACKING_URI", job["mlflow"])
    trial_dir = Path(job["out"]) / "trials" / f"{number:03d}"
    hook = _ReportToTune(job["metric"])
    if job.get("threads"):
        import torch

        torch.set_num_threads(job["threads"])
    run = fit(apply(job["base"], {**values, "output_dir": str(trial_dir)}), train=job["train"],
              validation=job["validation"], hooks=[hook])
    value = run.metrics.get(job["metric"])
    if not isinstance(value, (int, float)):
        raise TunelabError(f"search: the trials' validation metrics have no {job['metric']!r}")
    tune.report({job["metric"]: float(value), "final": 1, "artifact": str(run.artifact_dir),
                 "train_seconds": round(run.train.train_seconds, 2) if run.train else None,
                 "steps": run.train.steps if run.train else None})


def search_on_ray(config: Any, *, space: dict[str, Any] | None = None, trials: int = 20,
                  output_dir: str | Path | None = None, metric: str | None = None, direction: str | None = None,
                  sampler: str = "tpe", cpus_per_trial: int = 1, concurrent: int | None = None,
                  grace_period: int = 1, reduction_factor: int = 3, keep: str = "best", storage: str | None = None,
                  study_name: str | None = None, seed: int | None = None, address: str | None = None,
                  train: Any = None, validation: Any = None, overrides: dict[str, Any] | None = None) -> Any:
    """The search of ``tunelab.search`` run by Ray Tune: Optuna's sampler (``OptunaSearch``) picks each trial's
    values, an ASHA scheduler stops trials whose evaluations fall behind, every trial reserves its CPUs.

    Args:
        config: as for ``tunelab.search`` (a YAML path with a ``search:`` section, a mapping, or a Config + space).
        space: ``{dotted field: distribution}`` instead of the config's ``search:`` section.
        trials: trials to run (a Ray search starts a new study: it does not resume an earlier one).
        output_dir: where trials, the study and the results go (default: the config's ``output_dir``).
        metric, direction: the validation metric and ``maximize``/``minimize`` (defaults from the task).
        sampler: ``tpe`` or ``random``.
        cpus_per_trial: CPUs Ray reserves for each trial (also its torch threads).
        concurrent: trials at once (default: as many as the cluster's CPUs allow).
        grace_period, reduction_factor: ASHA's: evaluations every trial gets, and the rung ratio.
        keep: trial artifacts to keep: ``best``, ``all`` or ``none``.
        storage, study_name: the Optuna study the trials are recorded in (default ``sqlite:///OUT/study.db``).
        seed: the sampler's seed (default: the config's ``train.seed``).
        address: the Ray cluster (see ``ray_session``).
        train, validation: records instead of the config's files.
        overrides: dotted ``{field: value}`` set on the config.

    Returns:
        a ``tunelab.search.SearchResult`` (the same files as ``tunelab search``).

    Example:
        >>> search_on_ray("sst2_search.yaml", trials=20, cpus_per_trial=2)   # doctest: +SKIP
    """
    from .search import KEEP, SAMPLERS, _check_same_search, _optuna, _storage, _tidy, _write_results, prepare_search

    if sampler not in SAMPLERS or keep not in KEEP:
        raise ConfigError(f"sampler must be one of {', '.join(SAMPLERS)} and keep one of {', '.join(KEEP)}")
    if trials < 1 or cpus_per_trial < 1:
        raise ConfigError(f"trials and cpus_per_trial must be >= 1, got {trials} and {cpus_per_trial}")
    optuna = _optuna()  # missing Optuna is said before any data is read
    base, params, cfg, out, train_records, val_records, metric, direction = prepare_search(
        config, space, overrides, output_dir, train, validation, metric, direction)
    url = storage or f"sqlite:///{out / 'study.db'}"
    name = study_name or "tunelab-search"
    samplers = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}
    study = optuna.create_study(storage=_storage(optuna, url), study_name=name, direction=direction,
                                load_if_exists=True)
    if study.get_trials(deepcopy=False):
        raise ConfigError(f"study {name!r} at {url} already has trials; a Ray search starts a new study (it does "
                          "not resume one): give another --out, --storage or --study")
    _check_same_search(study, metric, params)
    started = time.perf_counter()
    with ray_session(address):
        from ray import tune
        from ray.tune.schedulers import ASHAScheduler

        searcher = _optuna_search_class()(
            space=_Suggest(params), metric=metric, mode="max" if direction == "maximize" else "min",
            sampler=samplers[sampler](seed=cfg.train.seed if seed is None else seed), study_name=name,
            # no heartbeats here (they belong to Study.optimize; Ray Tune retries trials itself)
            storage=optuna.storages.RDBStorage(url) if url.startswith(("sqlite:", "postgresql", "mysql"))
            else _storage(optuna, url))
        searcher.tunelab_out = str(out)
        job = {"base": base, "metric": metric, "out": str(out), "threads": cpus_per_trial,
               "train": train_records, "validation": val_records,
               "mlflow": (out / "mlruns").as_uri() if cfg.train.track == "mlflow" else None}
        trainable = tune.with_resources(tune.with_parameters(_search_trial, job=job), {"cpu": cpus_per_trial})
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=10**6, grace_period=grace_period,
                                  reduction_factor=reduction_factor)
        tuner = tune.Tuner(trainable, tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler, num_samples=trials, metric=metric,
            mode="max" if direction == "maximize" else "min", max_concurrent_trials=concurrent),
            run_config=tune.RunConfig(name="tunelab-search", storage_path=str(out / ".ray"), verbose=0))
        try:
            grid = tuner.fit()
        except Exception as err:  # Ray's errors carry the trial's own exception in their text
            raise TunelabError(f"Ray Tune failed: {_root_cause(err)}") from None
    failed = [r for r in grid if r.error is not None and not (r.metrics or {}).get(metric)]
    study = optuna.load_study(study_name=name, storage=_storage(optuna, url))
    if failed and len(failed) == len(grid):
        raise TunelabError("search stopped: every trial failed; the first: " + _root_cause(failed[0].error))
    _tidy(study, out, keep, [t.number for t in study.get_trials(deepcopy=False)])
    return _write_results(study, out, base, metric, direction, url, time.perf_counter() - started)
