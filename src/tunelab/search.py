"""Hyperparameter search: ``tunelab search CONFIG.yaml --trials N`` / ``tunelab.search``, on Optuna.

The config file's ``search:`` section declares what varies (``tunelab.search_space``). Each trial is one
``tunelab.fit`` of the config with the trial's values, in its own folder ``OUT/trials/NNN``. Optuna samples
(TPE by default) and prunes: the training loop's evaluations are reported to the trial (as evaluation 1, 2, ...)
and a trial the pruner (median or Hyperband) judges hopeless stops there. The study lives in SQLite
(``OUT/study.db``) by default, so an interrupted search resumes where it stopped (``--trials`` counts finished
trials, old and new); any Optuna storage URL shares one study between machines, each running
``tunelab search`` with the same ``--storage`` and ``--study``. A worker killed mid-trial stops sending its
heartbeat; its trial is marked failed and run again by a surviving or later worker.

What it writes into ``OUT``: ``best.yaml`` (the config with the best values, ready for ``tunelab train``),
``trials.csv`` (one row per trial), ``search.json`` (summary), and PNGs: optimisation history, parameter
importances and parallel coordinates. ``keep`` decides which trial artifacts stay: ``best`` (default), ``all``
or ``none`` (cleaning a trial up removes its artifact, not its tracker logs). With ``train.track`` set, every
trial logs to the tracker: MLflow into one local store ``OUT/mlruns``, TensorBoard under each trial's folder
(``tensorboard --logdir OUT/trials``). ``optuna-dashboard sqlite:///OUT/study.db`` opens the study in a browser.

Example:
    >>> result = tunelab.search("configs/sst2.yaml", trials=20)          # doctest: +SKIP
    >>> result.best_value, result.best_params, result.best_config       # doctest: +SKIP
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .artifact import write_yaml
from .config import Config, build_config, read_config_file
from .data import read_records
from .errors import ConfigError, TunelabError
from .hooks import TrainHook
from .metrics import higher_is_better
from .registry import TASKS
from .runs import text_table
from .search_space import Param, apply, check_space, parse_space

SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "hyperband", "none")
KEEP = ("best", "all", "none")


@dataclass
class SearchResult:
    """What ``search`` returns.

    Args:
        study_name: the Optuna study's name.
        storage: the Optuna storage URL (``optuna-dashboard STORAGE`` opens it).
        metric: the validation metric optimised; direction: ``maximize`` or ``minimize``.
        best_value, best_params, best_trial: the best finished trial's value, searched values and number.
        best_config: ``best.yaml``, the config with the best values.
        best_artifact: the best trial's artifact (None when ``keep="none"`` or it was another worker's).
        counts: finished trials by state (complete, pruned, fail).
        seconds: this call's wall time.
        trials_csv, summary: ``trials.csv`` and ``search.json``; plots: the PNGs written.
    """

    study_name: str
    storage: str
    metric: str
    direction: str
    best_value: float | None
    best_params: dict[str, Any]
    best_trial: int | None
    best_config: Path | None
    best_artifact: Path | None
    counts: dict[str, int]
    seconds: float
    trials_csv: Path
    summary: Path
    plots: list[Path] = field(default_factory=list)


class PruneOnEvaluate(TrainHook):
    """Reports each evaluation during training to the Optuna trial and stops the trial when its pruner says so."""

    def __init__(self, trial: Any, metric: str):
        self.trial, self.metric, self.evaluations = trial, metric, 0

    def on_evaluate(self, step: int, metrics: dict[str, Any]) -> None:
        """Report the metric as evaluation number 1, 2, ...; raise ``optuna.TrialPruned`` to stop."""
        import optuna

        value = metrics.get(self.metric)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return
        self.evaluations += 1
        self.trial.report(float(value), self.evaluations)
        self.trial.set_user_attr("last_step", step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after evaluation {self.evaluations} (step {step}): "
                                     f"{self.metric}={value:.4f}")


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise ConfigError("tunelab search needs Optuna: pip install 'tunelab[search]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def split_search(config: Config | dict[str, Any] | str | Path, space: dict[str, Any] | None = None,
                 overrides: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[Param]]:
    """The config to vary (a plain mapping, data paths absolute) and its parsed, checked search space.

    Args:
        config: a YAML path (its ``search:`` section is the space), a mapping (ditto) or a Config.
        space: the space, instead of the config's ``search:`` section.
        overrides: dotted ``{field: value}`` applied to the config first (the CLI's ``key=value``).
    """
    source = str(config) if isinstance(config, (str, Path)) else ""
    if isinstance(config, (str, Path)):
        data = read_config_file(config)
    elif isinstance(config, Config):
        data = config.model_dump(mode="json", exclude_unset=True)
    elif isinstance(config, dict):
        data = json.loads(json.dumps(config, default=str))
    else:
        raise ConfigError(f"search: config must be a YAML path, a mapping or a Config, got {type(config).__name__}")
    section = data.pop("search", None)
    space = space if space is not None else section
    if space is None:
        raise ConfigError(f"{source or 'the config'} has no search: section; declare what to vary, e.g.\n"
                          "search:\n  train.learning_rate: {loguniform: [1.0e-5, 1.0e-3]}\n  method.r: {choice: [4, 8, 16]}")
    base = build_config(data, source=source, dotted=overrides or {}).model_dump(mode="json", exclude_unset=True)
    for split in ("train", "validation", "test"):  # best.yaml is read from another folder: absolute paths
        value = (base.get("data") or {}).get(split)
        if isinstance(value, str) and Path(value).exists():
            base["data"][split] = str(Path(value).resolve())
    params = parse_space(space)
    check_space(base, params)
    return base, params


def prepare_search(config: Any, space: dict[str, Any] | None, overrides: dict[str, Any] | None,
                   output_dir: str | Path | None, train: Any, validation: Any, metric: str | None,
                   direction: str | None) -> tuple[dict[str, Any], list[Param], Config, Path, Any, Any, str, str]:
    """What every search backend starts from: the base config and its space (checked), the output folder (made),
    the training and validation records (read once, shared by the trials), the metric and its direction."""
    base, params = split_search(config, space, overrides)
    cfg = build_config(base)
    out = Path(output_dir or cfg.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    train_records = read_records(train) if train is not None else (
        read_records(cfg.data.train, format=cfg.data.format, encoding=cfg.data.encoding) if cfg.data.train else None)
    if train_records is None:
        raise ConfigError("search: no training data: set data.train in the config or pass train=...")
    val_records = read_records(validation) if validation is not None else None
    metric = (metric or cfg.train.metric
              or TASKS.get(cfg.task.name).from_training_data(cfg, train_records).primary_metric[0])
    return base, params, cfg, out, train_records, val_records, metric, _direction(metric, direction)


def _direction(metric: str, direction: str | None) -> str:
    if direction is not None:
        if direction not in ("maximize", "minimize"):
            raise ConfigError(f"direction must be maximize or minimize, got {direction!r}")
        return direction
    return "maximize" if higher_is_better(metric) else "minimize"


def _storage(optuna: Any, url: str) -> Any:
    if url.startswith(("sqlite:", "postgresql", "mysql")):
        from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

        # Heartbeats: a worker killed mid-trial leaves a RUNNING trial that is failed after the grace period
        # and retried once with the same values by whichever worker looks next.
        with warnings.catch_warnings():  # heartbeats are marked experimental; they have been in Optuna since 2.8
            warnings.simplefilter("ignore", category=optuna.exceptions.ExperimentalWarning)
            return RDBStorage(url, heartbeat_interval=20, grace_period=60,
                              heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1))
    if url.endswith(".log"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        return JournalStorage(JournalFileBackend(url))
    return url


def search(config: Config | dict[str, Any] | str | Path, *, space: dict[str, Any] | None = None, trials: int = 20,
           output_dir: str | Path | None = None, metric: str | None = None, direction: str | None = None,
           sampler: str = "tpe", pruner: str = "median", storage: str | None = None, study_name: str | None = None,
           keep: str = "best", timeout: float | None = None, seed: int | None = None, train: Any = None,
           validation: Any = None, overrides: dict[str, Any] | None = None, quiet: bool = False) -> SearchResult:
    """Search hyperparameters with Optuna (see the module docstring).

    Args:
        config: a YAML path whose ``search:`` section is the space, a mapping, or a Config (then give ``space``).
        space: ``{dotted field: distribution}``, instead of the config's ``search:`` section.
        trials: finished trials (complete or pruned) the study should have, counting earlier runs of it.
        output_dir: where trials, the study and the results go (default: the config's ``output_dir``).
        metric: the validation metric to optimise (default: the config's ``train.metric``, else the task's primary metric).
        direction: ``maximize`` or ``minimize`` (default: from the metric).
        sampler: ``tpe`` (default) or ``random``.
        pruner: ``median`` (default), ``hyperband`` or ``none``; pruning needs evaluations during training
            (``train.eval_every``, or several epochs).
        storage: an Optuna storage URL (default: ``sqlite:///OUT/study.db``); a path ending in ``.log`` is a
            journal file.
        study_name: the study (default: ``tunelab-search``); workers sharing a study use the same name.
        keep: which trial artifacts stay on disk: ``best``, ``all`` or ``none``.
        timeout: stop starting new trials after this many seconds.
        seed: the sampler's seed (default: the config's ``train.seed``).
        train, validation: records (path, DataFrame, list of dicts) instead of the config's ``data.train`` etc.
        overrides: dotted ``{field: value}`` set on the config before searching.
        quiet: no per-trial lines on stderr.

    Returns:
        a ``SearchResult``.

    Example:
        >>> result = search("sst2.yaml", trials=20, pruner="median")        # doctest: +SKIP
        >>> tunelab.fit(result.best_config)                                   # doctest: +SKIP
    """
    for name, value, allowed in (("sampler", sampler, SAMPLERS), ("pruner", pruner, PRUNERS), ("keep", keep, KEEP)):
        if value not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise ConfigError(f"trials must be a whole number >= 1, got {trials!r}")
    optuna = _optuna()  # missing Optuna is said before any data is read
    base, params, cfg, out, train_records, val_records, metric, direction = prepare_search(
        config, space, overrides, output_dir, train, validation, metric, direction)
    url = storage or f"sqlite:///{out / 'study.db'}"
    name = study_name or "tunelab-search"
    samplers = {"tpe": lambda: optuna.samplers.TPESampler(seed=cfg.train.seed if seed is None else seed),
                "random": lambda: optuna.samplers.RandomSampler(seed=cfg.train.seed if seed is None else seed)}
    pruners = {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
               "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, reduction_factor=3),
               "none": lambda: optuna.pruners.NopPruner()}
    study = optuna.create_study(storage=_storage(optuna, url), study_name=name, direction=direction,
                                sampler=samplers[sampler](), pruner=pruners[pruner](), load_if_exists=True)
    _check_same_search(study, metric, params)
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    done_before = len(study.get_trials(deepcopy=False, states=finished))
    mine: list[int] = []
    failures: list[str] = []  # this process's consecutive failed trials
    started = time.perf_counter()

    def objective(trial: Any) -> float:
        from .api import fit

        values = {p.path: p.suggest(trial) for p in params}
        trial_dir = out / "trials" / f"{trial.number:03d}"
        mine.append(trial.number)
        trial.set_user_attr("output_dir", str(trial_dir))
        if not quiet:
            shown = ", ".join(f"{k}={_short(v)}" for k, v in values.items())
            print(f"trial {trial.number}: {shown}", file=sys.stderr, flush=True)
        try:
            run = fit(apply(base, {**values, "output_dir": str(trial_dir)}), train=train_records,
                      validation=val_records, hooks=[PruneOnEvaluate(trial, metric)])
        except TunelabError as err:
            failures.append(f"trial {trial.number} ({', '.join(f'{k}={_short(v)}' for k, v in values.items())}): {err}")
            if len(failures) >= 3:
                trial.study.stop()
            raise
        failures.clear()
        value = run.metrics.get(metric)
        if not isinstance(value, (int, float)):
            raise TunelabError(f"search: the trials' validation metrics have no {metric!r} (they have "
                               f"{', '.join(k for k, v in run.metrics.items() if isinstance(v, (int, float)))})")
        trial.set_user_attr("artifact", str(run.artifact_dir))
        if run.train is not None:
            trial.set_user_attr("train_seconds", round(run.train.train_seconds, 2))
            trial.set_user_attr("steps", run.train.steps)
        return float(value)

    def after_trial(study: Any, trial: Any) -> None:
        if not quiet:
            state = trial.state.name.lower()
            value = f"{metric}={trial.value:.4f}" if trial.value is not None else state
            best = _best(study)
            print(f"trial {trial.number} {state}: {value}" + (f"  (best {best.value:.4f}, trial {best.number})"
                                                              if best else ""), file=sys.stderr, flush=True)
        _tidy(study, out, keep, mine)

    remaining = trials - done_before
    tracking = cfg.train.track == "mlflow" and "MLFLOW_TRACKING_URI" not in os.environ
    if tracking:  # every trial one run in one local MLflow store: `mlflow ui --backend-store-uri OUT/mlruns`
        os.environ["MLFLOW_TRACKING_URI"] = (out / "mlruns").as_uri()
    try:
        if remaining > 0:
            if not quiet:
                print(f"search: {remaining} trial(s) to run ({done_before} finished before) in study {name!r} at "
                      f"{url}; metric {metric} ({direction})", file=sys.stderr, flush=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", category=optuna.exceptions.ExperimentalWarning)
                # n_trials bounds this process (a failed trial uses a slot: a rerun tries again); MaxTrialsCallback
                # stops it as soon as the shared study has enough finished trials, whoever ran them.
                study.optimize(objective, n_trials=remaining, timeout=timeout, catch=(TunelabError,),
                               callbacks=[optuna.study.MaxTrialsCallback(trials, states=finished), after_trial])
        elif not quiet:
            print(f"search: study {name!r} already has {done_before} finished trials (asked for {trials})",
                  file=sys.stderr)
    finally:
        if tracking:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
    if len(failures) >= 3:
        raise TunelabError("search stopped: three trials in a row failed; the last:\n" + failures[-1])
    _tidy(study, out, keep, mine)
    return _write_results(study, out, base, metric, direction, url, time.perf_counter() - started)


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _best(study: Any) -> Any:
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None


def _check_same_search(study: Any, metric: str, params: list[Param]) -> None:
    """A resumed or shared study must be the same search: same metric, same fields."""
    attrs = study.user_attrs
    fields = sorted(p.path for p in params)
    if not attrs:
        study.set_user_attr("metric", metric)
        study.set_user_attr("fields", fields)
        return
    if attrs.get("metric") != metric or attrs.get("fields") != fields:
        raise ConfigError(f"study {study.study_name!r} was made for metric {attrs.get('metric')!r} over "
                          f"{attrs.get('fields')}, not {metric!r} over {fields}: give another --study name or storage")


def _tidy(study: Any, out: Path, keep: str, mine: list[int]) -> None:
    """Remove the trial folders ``keep`` says to drop (only this process's trials that are finished)."""
    if keep == "all":
        return
    best = _best(study)
    for trial in study.get_trials(deepcopy=False):
        if trial.number not in mine or trial.state.name == "RUNNING" or trial.state.name == "WAITING":
            continue
        if keep == "best" and best is not None and trial.number == best.number:
            continue
        folder = out / "trials" / f"{trial.number:03d}"
        if not folder.is_dir():
            continue
        # the artifact goes; tracker logs (TensorBoard under the trial folder) stay for comparing trials
        shutil.rmtree(folder / "artifact", ignore_errors=True)
        (folder / "checkpoint.pt").unlink(missing_ok=True)
        if all(p.name.startswith(".") for p in folder.iterdir()):
            shutil.rmtree(folder, ignore_errors=True)


def _write_results(study: Any, out: Path, base: dict[str, Any], metric: str, direction: str, url: str,
                   seconds: float) -> SearchResult:
    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for trial in trials:
        counts[trial.state.name.lower()] = counts.get(trial.state.name.lower(), 0) + 1
    best = _best(study)
    trials_csv = out / "trials.csv"
    fields = sorted({k for t in trials for k in t.params})
    tmp = trials_csv.with_name(".trials.csv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["number", "state", metric, *fields, "evaluations", "train_seconds", "duration_s", "artifact"])
        for t in trials:
            ended, began = t.datetime_complete, t.datetime_start
            duration = (ended - began).total_seconds() if ended and began else ""
            artifact = t.user_attrs.get("artifact", "")
            writer.writerow([t.number, t.state.name.lower(), "" if t.value is None else t.value,
                             *[t.params.get(f, "") for f in fields], len(t.intermediate_values),
                             t.user_attrs.get("train_seconds", ""), round(duration, 1) if duration != "" else "",
                             artifact if artifact and Path(artifact).is_dir() else ""])
    os.replace(tmp, trials_csv)
    best_config = None
    best_artifact = None
    if best is not None:
        best_config = out / "best.yaml"
        config = apply(base, {**best.params, "output_dir": str(out / "best")})
        write_yaml(out / ".best.yaml.tmp", config)  # complete or not at all
        os.replace(out / ".best.yaml.tmp", best_config)
        artifact = best.user_attrs.get("artifact")
        best_artifact = Path(artifact) if artifact and Path(artifact).is_dir() else None
    plots = _plots(study, out)
    summary = {"study": study.study_name, "storage": url, "metric": metric, "direction": direction, "counts": counts,
               "best": None if best is None else {"number": best.number, "value": best.value, "params": best.params,
                                                  "artifact": str(best_artifact) if best_artifact else None},
               "best_config": str(best_config) if best_config else None, "seconds": round(seconds, 1),
               "plots": [p.name for p in plots]}
    (out / ".search.json.tmp").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    os.replace(out / ".search.json.tmp", out / "search.json")
    return SearchResult(study.study_name, url, metric, direction, None if best is None else best.value,
                        dict(best.params) if best else {}, best.number if best else None, best_config, best_artifact,
                        counts, round(seconds, 1), trials_csv, out / "search.json", plots)


def _plots(study: Any, out: Path) -> list[Path]:
    """Optimisation history, parameter importances and parallel coordinates (each when the study has enough)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as vis

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    wanted = [("optimization_history.png", vis.plot_optimization_history, 1)]
    if len({k for t in complete for k in t.params}) >= 1:
        wanted += [("param_importances.png", vis.plot_param_importances, 2),
                   ("parallel_coordinate.png", vis.plot_parallel_coordinate, 2)]
    written = []
    for filename, plot, needs in wanted:
        if len(complete) < needs:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = plot(study)
            figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            figure.set_size_inches(8, 5)
            figure.tight_layout()
            figure.savefig(out / filename, dpi=110)
            plt.close(figure)
            written.append(out / filename)
        except (ValueError, RuntimeError) as err:  # e.g. importances of a parameter that never varied
            print(f"note: {filename} not drawn: {err}", file=sys.stderr)
    return written


def trials_table(result: SearchResult, limit: int = 20) -> str:
    """The trials of a search as a text table, best first (what ``tunelab search`` prints).

    Args:
        result: what ``search`` returned.
        limit: at most this many rows.
    """
    with open(result.trials_csv, encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    scored = [r for r in rows if r[result.metric] != ""]
    scored.sort(key=lambda r: float(r[result.metric]), reverse=result.direction == "maximize")
    rest = [r for r in rows if r[result.metric] == ""]
    columns = [c for c in rows[0] if c not in ("artifact",)] if rows else []
    shown = (scored + rest)[:limit]
    return text_table(columns, [[_cell(r[c]) for c in columns] for r in shown])


def _cell(value: str) -> str:
    try:
        number = float(value)
    except ValueError:
        return value
    return value if number.is_integer() and "." not in value else f"{number:.4g}"


__all__ = ["PruneOnEvaluate", "SearchResult", "search", "split_search", "trials_table"]
