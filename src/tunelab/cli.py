"""Command line: ``tunelab train | eval | predict | demo | info``.

YAML keys and ``key=value`` overrides map one-to-one onto the validated Config:
``tunelab train configs/sst2_lora.yaml train.epochs=1 method.r=4``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from .data import FORMATS
from .errors import ConfigError, InputError, TunelabError


def cmd_train(args: argparse.Namespace) -> int:
    """``tunelab train CONFIG [key=value ...] [--nproc N ...]``: fit and print the summary; with ``--nproc`` or
    ``--nnodes``, the same under torchrun (distributed data parallel)."""
    from .api import fit, summary
    from .config import load_config
    from .distributed import launch, rank_and_size

    if args.backend == "ray":
        from .config import parse_overrides
        from .ray_backend import train_on_ray

        if args.nproc > 1 or args.nnodes > 1:
            raise ConfigError("--backend ray places the workers itself: use --workers, not --nproc/--nnodes")
        load_config(args.config, args.overrides)  # a bad config is named here, before Ray starts
        result = train_on_ray(args.config, workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                              address=args.ray_address, max_failures=args.max_restarts,
                              overrides=parse_overrides(args.overrides))
        metrics = ", ".join(f"{k}={v:.4f}" for k, v in result["metrics"].items() if isinstance(v, (int, float)))
        print(f"ray train: {args.workers} workers, {result['steps']} steps; validation {metrics}\n"
              f"artifact: {result['artifact_dir']}")
        return 0
    if args.nproc > 1 or args.nnodes > 1:
        if rank_and_size()[1] > 1:
            raise ConfigError("--nproc/--nnodes start a distributed run; this process is already part of one "
                              "(torchrun, accelerate launch): leave them out")
        if args.nnodes > 1 and not args.rdzv_endpoint:
            raise ConfigError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (the first machine), the same on every node")
        load_config(args.config, args.overrides)  # a bad config is named here, once, not by every rank
        return launch([args.config, *args.overrides], args.nproc, args.nnodes, args.node_rank, args.rdzv_endpoint,
                      args.max_restarts)
    cfg = load_config(args.config, args.overrides)
    run = fit(cfg)
    print(summary(run))
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    """``tunelab search CONFIG --trials N``: an Optuna search over the config's ``search:`` section."""
    from .config import parse_overrides
    from .search import search, trials_table

    if args.backend == "ray":
        from .ray_backend import search_on_ray

        if args.pruner not in ("median", "hyperband") or args.timeout:
            raise ConfigError("--backend ray prunes with Ray Tune's ASHA scheduler and has no --timeout: leave out "
                              "--pruner and --timeout")
        result = search_on_ray(_existing(args.config, "config"), trials=args.trials, output_dir=args.out,
                               metric=args.metric, direction=args.direction, sampler=args.sampler,
                               cpus_per_trial=args.cpus_per_worker, concurrent=args.workers, keep=args.keep,
                               storage=args.storage, study_name=args.study, address=args.ray_address,
                               overrides=parse_overrides(args.overrides))
    else:
        result = search(_existing(args.config, "config"), trials=args.trials, output_dir=args.out, metric=args.metric,
                        direction=args.direction, sampler=args.sampler, pruner=args.pruner, storage=args.storage,
                        study_name=args.study, keep=args.keep, timeout=args.timeout,
                        overrides=parse_overrides(args.overrides))
    print(trials_table(result))
    counts = ", ".join(f"{n} {state}" for state, n in result.counts.items())
    print(f"\n{counts}; this run {result.seconds:.0f} s")
    if result.best_config is not None:
        print(f"best {result.metric}: {result.best_value:.4f} (trial {result.best_trial})\n"
              f"best config: {result.best_config}   ->   tunelab train {result.best_config}")
    if result.best_artifact is not None:
        print(f"best artifact: {result.best_artifact}")
    for plot in result.plots:
        print(f"plot: {plot}")
    print(f"study: optuna-dashboard {result.storage}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    """``tunelab runs [DIR]`` lists the runs under DIR; ``tunelab runs A B`` compares two runs."""
    from .runs import compare, compare_table, list_runs, runs_table

    if len(args.paths) > 2:
        raise InputError("tunelab runs takes one folder (list its runs) or two runs (compare them)")
    if len(args.paths) == 2:
        comparison = compare(*args.paths)
        print(json.dumps(comparison, indent=2, default=str) if args.json else compare_table(comparison))
        return 0
    folder = args.paths[0] if args.paths else "runs"
    rows = list_runs(folder)
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "config"} for r in rows], indent=2, default=str))
    elif not rows:
        print(f"no runs under {folder}")
    else:
        print(runs_table(rows, base=folder))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """``tunelab eval ARTIFACT DATA``: the metrics, as a table or JSON."""
    from .data import read_records
    from .metrics import scalar_metrics
    from .predictor import Predictor

    records = read_records(_existing(args.data, "data"), format=args.format, encoding=args.encoding)
    metrics = Predictor.load(args.artifact, threads=args.threads).evaluate(records)
    if args.json:
        print(json.dumps(metrics, indent=2, default=str))
        return 0
    for key, value in scalar_metrics(metrics).items():
        print(f"{key:>18}  {value:.4f}")
    for section, rows in metrics.items():
        if isinstance(rows, dict) and rows and all(isinstance(r, dict) and "f1" in r for r in rows.values()):
            print(f"\n{section.replace('_', ' ')}:")
            for name, row in rows.items():
                support = row.get("support", row.get("number", ""))
                print(f"  {str(name):>22}  p={row.get('precision', float('nan')):.3f} "
                      f"r={row.get('recall', float('nan')):.3f} f1={row['f1']:.3f}" + (f" n={support}" if support != "" else ""))
    return 0


def _existing(path: str, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} file {p} does not exist")
    if p.is_dir():
        raise InputError(f"{p} is a directory; give a {what} file")
    return p


def _predict_chunks(args: argparse.Namespace, predictor: Any, skip: int) -> tuple[Any, int | None]:
    """Chunks of records to predict for, each row numbered: --file (JSON Lines and text files streamed in
    constant memory), the arguments, or stdin (every line is an input, blank ones included, so output line N
    answers input line N). Returns the chunks and the number of inputs when known cheaply (for progress)."""
    from .data import Records, count_lines, iter_records
    from .predictor import as_own_columns

    if args.file:
        path = _existing(args.file, "input")
        chunks = iter_records(path, format=args.format, encoding=args.encoding, chunk=args.chunk, skip=skip)
        return (as_own_columns(predictor, c) for c in chunks), count_lines(path)
    texts = list(args.texts) if args.texts else [line.rstrip("\r\n") for line in sys.stdin]
    if not args.texts:
        while texts and not texts[-1].strip():  # the newline at the end of input is not an input
            texts.pop()
    records = predictor.as_records(texts) if texts else Records([], "stdin", [], [])
    records.source = "arguments" if args.texts else "stdin"
    records.lines = list(range(1, len(records) + 1))
    parts = [records.subset(range(i, min(i + args.chunk, len(records)))) for i in range(skip, len(records), args.chunk)]
    return iter(parts), len(records)


def cmd_predict(args: argparse.Namespace) -> int:
    """``tunelab predict ARTIFACT [TEXT ...] [--file F] [--backend ray]``: one JSON line per input, in order."""
    from .predictor import Predictor, prediction_line
    from .progress import progress

    if args.backend == "ray":
        return _predict_on_ray(args)
    predictor = Predictor.load(args.artifact, threads=args.threads)
    if args.stream:
        if args.file:
            raise InputError("--stream works for generation artifacts with texts given as arguments or on stdin")
        texts, _ = _predict_chunks(args, predictor, 0)
        for chunk in texts:
            for i in range(len(chunk)):
                for piece in predictor.stream(chunk.subset([i])):
                    sys.stdout.write(piece)
                    sys.stdout.flush()
                sys.stdout.write("\n")
        return 0
    if args.resume and not args.output:
        raise InputError("--resume continues an --output file; give the same --output as the stopped job")
    out = _PartialOutput(Path(args.output), resume=args.resume) if args.output else None
    done = out.open() if out else 0
    handle = out.handle if out else sys.stdout
    on_error = "raise" if args.on_error == "fail" else "record"
    failed = written = 0
    try:
        chunks, total = _predict_chunks(args, predictor, done)
        quiet = total is not None and total <= args.chunk
        for chunk in progress(chunks, total=-(-max(0, (total or 0) - done) // args.chunk), desc="predict",
                              unit="chunk", quiet=quiet):
            for i, pred in enumerate(predictor.predict(chunk, batch_size=args.batch_size, on_error=on_error)):
                failed += "error" in pred
                handle.write(prediction_line(chunk, i, pred, args.id_column) + "\n")
            written += len(chunk)
            handle.flush()
        if out:
            out.commit()
    except TunelabError:
        if out and not done:
            out.discard()  # a bad input: fix it and run again (rows may move); nothing to resume
        elif out:
            print(f"note: the {done} rows written before are kept in {out.partial} for --resume", file=sys.stderr)
        raise
    finally:
        if out:
            out.close()
    if failed:
        print(f"warning: {failed} of {written} inputs could not be predicted: see the \"error\" field of those "
              "rows (--on-error fail stops at the first instead)", file=sys.stderr)
    return 0


def _predict_on_ray(args: argparse.Namespace) -> int:
    """``tunelab predict ART --file F|DIR --backend ray``: Ray Data actors predict, this process writes in order."""
    from .ray_backend import predict_on_ray, require_ray

    if not args.file or args.texts or args.stream or args.resume:
        raise InputError("--backend ray predicts a --file (or a directory of files) and writes all of it: give --file, "
                         "without texts, --stream or --resume")
    path = Path(args.file)
    if not path.exists():
        raise InputError(f"input {path} does not exist")
    require_ray()
    out = _PartialOutput(Path(args.output), resume=False) if args.output else None
    handle = sys.stdout
    if out:
        out.open()
        handle = out.handle
    try:
        counts = predict_on_ray(args.artifact, path, handle, actors=args.workers, cpus_per_actor=args.cpus_per_worker,
                                batch_size=args.batch_size, on_error="raise" if args.on_error == "fail" else "record",
                                id_column=args.id_column, format=args.format, encoding=args.encoding, chunk=args.chunk,
                                address=args.ray_address)
        if out:
            out.commit()
    except BaseException:
        if out:
            out.discard()
        raise
    finally:
        if out:
            out.close()
    if counts["failed"]:
        print(f"warning: {counts['failed']} of {counts['written']} inputs could not be predicted: see the \"error\" "
              "field of those rows", file=sys.stderr)
    return 0


class _PartialOutput:
    """JSON lines written to ``.NAME.partial`` beside ``target`` as they are made, renamed onto ``target`` only
    when complete: a failed run never leaves a truncated file where a previous complete one was, and a killed
    one leaves the partial file for ``--resume`` to continue (a half-written last line is dropped)."""

    def __init__(self, target: Path, resume: bool):
        self.target, self.resume = target, resume
        self.partial = target.with_name(f".{target.name}.partial")
        self.handle: Any = None

    def open(self) -> int:
        """Open for writing; returns how many rows a resumed partial file already holds."""
        done = 0
        if self.partial.exists() and not self.resume:
            raise InputError(f"{self.partial} holds the output of an unfinished run: add --resume to continue it, "
                             "or delete it to start over")
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            if self.resume and self.partial.exists():
                data = self.partial.read_bytes()
                complete = data[: data.rfind(b"\n") + 1]  # a line cut by the kill is written again
                done = complete.count(b"\n")
                self.partial.write_bytes(complete)
                print(f"resuming {self.target}: {done} rows already written", file=sys.stderr)
            elif self.resume:
                print(f"note: no unfinished output at {self.partial}; starting from the first row", file=sys.stderr)
            self.handle = open(self.partial, "a" if done else "w", encoding="utf-8")
        except OSError as err:
            raise InputError(f"cannot write {self.target}: {err.strerror}") from None
        return done

    def commit(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        os.replace(self.partial, self.target)

    def discard(self) -> None:
        self.close()
        self.partial.unlink(missing_ok=True)

    def close(self) -> None:
        if self.handle and not self.handle.closed:
            self.handle.close()


def cmd_export(args: argparse.Namespace) -> int:
    """``tunelab export ARTIFACT [--format onnx|onnx-genai] [--quantize Q] [--check DATA]``: a new artifact."""
    from .data import read_records
    from .export import export

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    check = read_records(_existing(args.check, "check"), format=args.check_format,
                         encoding=args.check_encoding) if args.check else None
    print(export(args.artifact, args.output, format=args.export_format, quantize=args.quantize, check=check,
                 max_drop=args.max_drop))
    return 0


def cmd_compress(args: argparse.Namespace) -> int:
    """``tunelab compress ARTIFACT --prune heads=0.3[,ffn=0.2]``: a pruned ONNX artifact beside the source."""
    from .compress import compress
    from .data import read_records
    from .errors import ConfigError

    shares: dict[str, float] = {}
    for part in filter(None, args.prune.split(",")):
        key, _, value = part.partition("=")
        if key.strip() not in ("heads", "ffn"):
            raise ConfigError(f"--prune {part!r}: give heads=SHARE and/or ffn=SHARE, e.g. --prune heads=0.3")
        try:
            shares[key.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"--prune {part!r}: {value!r} is not a number") from None
    def records(path: str | None, what: str) -> Any:
        return read_records(_existing(path, what), format=args.format, encoding=args.encoding) if path else None

    print(compress(args.artifact, args.output, **shares, recover_data=records(args.recover, "recover"),
                   recover_steps=args.recover_steps, quantize=args.quantize, check=records(args.check, "check"),
                   max_drop=args.max_drop))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """``tunelab serve [NAME=]ARTIFACT ... [--config serve.yaml]``, or ``--new-key`` to make an API key."""
    import re

    import yaml
    from pydantic import ValidationError

    from .errors import ConfigError
    from .serve import ServeSettings, new_key, serve

    if args.new_key:
        token, line = new_key([s for s in (args.scopes or "*").split(",") if s])
        print(f"key (give it to the client; it is not stored anywhere):\n  {token}\n"
              f"line for the key file (--keys-file):\n  {line}")
        return 0
    settings: dict = {}
    if args.config:
        try:
            settings = yaml.safe_load(_existing(args.config, "config").read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{args.config}: not valid YAML: {err}") from None
        if not isinstance(settings, dict):
            raise ConfigError(f"{args.config}: expected a mapping of serve settings")
    models = dict(settings.pop("models", {}) or {})
    for spec in args.models:
        name, _, path = spec.rpartition("=")
        if not name:  # the artifact's folder (or its run folder) names it
            parts = [p for p in Path(path).resolve().parts if p != "artifact"]
            name = re.sub(r"[^A-Za-z0-9._-]", "-", parts[-1])[:64] if parts else "model"
        models[name] = path
    if not models:
        raise ConfigError("name at least one artifact to serve: tunelab serve runs/sst2 (or NAME=ARTIFACT)")
    flags = {"host": args.host, "port": args.port, "keys_file": args.keys_file, "max_batch_size": args.max_batch_size,
             "max_wait_ms": args.max_wait_ms, "model_batch_size": args.model_batch_size,
             "rate_per_minute": args.rate_per_minute,
             "share_bases": False if args.no_shared_bases else None, "ui": False if args.no_ui else None}
    settings.update({k: v for k, v in flags.items() if v is not None})
    try:
        config = ServeSettings(models=models, **settings)
    except ValidationError as err:
        first = err.errors()[0]
        raise ConfigError(f"serve settings: {'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
    serve(config.models, **config.model_dump(exclude={"models"}))
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    """``tunelab explain ARTIFACT [TEXT ...] [--file F] [--method M] [--html out.html]``: one JSON line per
    input with its word attributions; ``--faithfulness`` measures the methods on the inputs instead."""
    from .explain import explanation_html, faithfulness
    from .predictor import Predictor
    from .progress import progress

    if args.html and not Path(args.html).resolve().parent.is_dir():
        raise InputError(f"--html {args.html}: the folder {Path(args.html).resolve().parent} does not exist")
    predictor = Predictor.load(args.artifact, threads=args.threads)
    args.chunk = 1 << 30  # explanations are few: one chunk
    chunks, _ = _predict_chunks(args, predictor, 0)
    records = [row for chunk in chunks for row in chunk.rows][: args.limit]
    if not records:
        raise InputError("nothing to explain: give texts, --file, or lines on stdin")
    if args.faithfulness:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        ticks = progress(range(len(records)), total=len(records), desc="faithfulness", unit="input")
        counter = iter(ticks)
        report = faithfulness(predictor.explain_model(), records, methods, k=args.k,
                              progress=lambda done: next(counter, None))
        print(json.dumps(report, indent=2))
        return 0
    options = {"steps": args.steps} if args.steps else {}
    def every_target(row: dict) -> list[dict]:
        first = predictor.explain([row], method=args.method, target=None if args.target == "all" else args.target,
                                  **options)[0]
        if args.target != "all":
            return [first]
        return [first] + [predictor.explain([row], method=args.method, target=t, **options)[0] for t in first["targets"][1:]]

    explanations = [e for row in progress(records, total=len(records), desc="explain", unit="input", quiet=len(records) < 4)
                    for e in every_target(row)]
    for e in explanations:
        print(json.dumps(e, ensure_ascii=False))
    if args.html:
        html = Path(args.html)
        partial = html.with_name(f".{html.name}.partial")  # complete or not at all
        partial.write_text(explanation_html(explanations, f"tunelab explain: {args.method}"), encoding="utf-8")
        os.replace(partial, html)
        print(f"wrote {html}", file=sys.stderr)
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    """``tunelab analyze ARTIFACT DATA [--out DIR] [--html FILE]``: the error analysis report (JSON, PNGs, HTML);
    prints the metrics and where the report is."""
    from .analysis import DEFAULT_SLICES, analyze, artifact_name
    from .data import read_records
    from .metrics import scalar_metrics
    from .predictor import Predictor

    if args.html and not Path(args.html).resolve().parent.is_dir():
        raise InputError(f"--html {args.html}: the folder {Path(args.html).resolve().parent} does not exist")
    records = read_records(_existing(args.data, "data"), format=args.format, encoding=args.encoding)
    predictor = Predictor.load(args.artifact, threads=args.threads)
    out = Path(args.out) if args.out else Path(f"{artifact_name(predictor)}-analysis")
    slices = list(DEFAULT_SLICES) + list(args.slice or [])
    maps = None if args.maps is None else [m.strip() for m in args.maps.split(",") if m.strip()]
    result = analyze(predictor, records, out=out, html=args.html, slices=slices, maps=maps, hardest=args.hardest,
                     explain=None if args.explain == "none" else args.explain, calibrate=args.calibrate,
                     limit=args.limit)
    for key, value in scalar_metrics(result["metrics"]).items():
        print(f"{key:>18}  {value:.4f}")
    calibration = result.get("calibration")
    if calibration:
        print(f"{'ECE':>18}  {calibration['ece_before']:.4f} -> {calibration['ece_after']:.4f} temperature scaled "
              f"(T={calibration['temperature']:.3f}{', stored' if args.calibrate else ''})")
    for note in result["notes"]:
        print(f"note: {note}", file=sys.stderr)
    print(f"report: {result['files']['report']}")
    return 0


def cmd_attack(args: argparse.Namespace) -> int:
    """``tunelab attack ARTIFACT DATA [--recipe char|word] [--n 500]``: accuracy under attack, success rate, words
    perturbed and queries, with examples; ``--out`` keeps the whole report as JSON."""
    from .attack import attack
    from .data import read_records
    from .predictor import Predictor

    if args.out and not Path(args.out).resolve().parent.is_dir():
        raise InputError(f"--out {args.out}: the folder {Path(args.out).resolve().parent} does not exist")
    records = read_records(_existing(args.data, "data"), format=args.format, encoding=args.encoding)
    predictor = Predictor.load(args.artifact, threads=args.threads)
    options = {"similarity": args.similarity} if args.similarity is not None else {}
    report = attack(predictor, records, recipe=args.recipe, n=args.n, budget=args.budget, seed=args.seed, **options)
    for key in ("clean_accuracy", "accuracy_under_attack", "attack_success_rate", "avg_words_perturbed",
                "avg_share_perturbed", "avg_queries"):
        print(f"{key:>22}  {report[key]:.4f}")
    for example in report["examples"][:3]:
        print(f"\n  {example['gold']} -> {example['label_after']}\n    {example['original']}\n    {example['attacked']}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def cmd_train_sequence(args: argparse.Namespace) -> int:
    """``tunelab train-sequence SEQUENCE.yaml``: continual learning of the tasks listed there, in order; prints the
    forgetting matrix and its summary."""
    import yaml

    from .continual import fit_sequence

    path = _existing(args.sequence, "sequence")
    try:
        spec = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("tasks"), list):
        raise ConfigError(f"{path}: expected a mapping with 'tasks: [...]' (and model, output_dir, continual, train)")
    unknown = sorted(set(spec) - {"tasks", "model", "output_dir", "continual", "train", "method"})
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r}; known: continual, method, model, output_dir, tasks, train")
    base = Path(path).parent
    for task in spec["tasks"]:  # data files are relative to the sequence file
        for key in ("train", "validation"):
            if isinstance(task, dict) and isinstance(task.get(key), str) and not Path(task[key]).is_absolute():
                task[key] = str(base / task[key])
    report = fit_sequence(spec["tasks"], output_dir=spec.get("output_dir") or args.output_dir or "runs/sequence",
                          model=spec.get("model", "minilm"), continual=spec.get("continual", "naive"),
                          train=spec.get("train"), method=spec.get("method"))
    names = report["sequence"]
    print("after \\ on  " + "  ".join(f"{n:>10}" for n in names))
    for name, row in zip(names, report["matrix"]):
        print(f"{name:>10}  " + "  ".join(f"{'':>10}" if v is None else f"{v:>10.4f}" for v in row))
    print(f"average accuracy {report['avg_accuracy']:.4f}  average forgetting {report['avg_forgetting']:.4f}  "
          f"backward transfer {report['backward_transfer']:.4f}")
    print(f"wrote {report['folder']}/sequence.json and one artifact per task")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``tunelab demo``: the packaged end-to-end example."""
    from .demo import run_demo

    return run_demo(args.output_dir, args.overrides)


def cmd_info(args: argparse.Namespace) -> int:
    """``tunelab info [ARTIFACT]``: versions, registered names and packaged models, or a manifest."""
    from .artifact import find_artifact, library_versions, read_manifest
    from .models import PACKAGED, resolve_model

    if args.artifact:
        manifest = read_manifest(find_artifact(args.artifact))
        keys = ("tunelab_version", "strategy", "task", "method", "model_format", "base_model", "metrics", "parameters",
                "libraries")
        print(json.dumps({k: manifest[k] for k in keys if k in manifest}, indent=2, default=str))
        return 0
    import torch

    from .registry import METHODS, STRATEGIES, TASKS, load_plugins

    print("tunelab", library_versions().get("tunelab"))
    for pkg, version in library_versions().items():
        print(f"  {pkg:<13} {version}")
    print(f"torch threads: {torch.get_num_threads()}, cuda: {torch.cuda.is_available()}")
    print(f"network: {'allowed' if os.environ.get('HF_HUB_OFFLINE') in ('0', None) else 'off (HF_HUB_OFFLINE=1)'}")
    load_plugins()
    print(f"tasks: {', '.join(TASKS.names())}\nmethods: {', '.join(METHODS.names())}\n"
          f"strategies: {', '.join(STRATEGIES.names())}")
    print("packaged models:")
    for name, info in PACKAGED.items():
        try:
            path = resolve_model(name).path if name == "minilm" or args.resolve else "(found; resolved on first use)"
            if name != "minilm" and not args.resolve:
                import importlib.util

                if importlib.util.find_spec(info["package"]) is None:
                    raise TunelabError(f"not installed: {info['install']}")
            print(f"  {name:<8} {info['description']}\n           {path}")
        except TunelabError as err:
            print(f"  {name:<8} {err}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``tunelab`` command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback of an unexpected error")
    reading = argparse.ArgumentParser(add_help=False)
    reading.add_argument("--format", default="auto", choices=FORMATS,
                         help="input file format (default: by extension, checked against the content)")
    reading.add_argument("--encoding", default="utf-8", help="input file encoding (default utf-8)")
    reading.add_argument("--threads", type=_positive, help="torch CPU threads (default: all cores)")
    parser = argparse.ArgumentParser(prog="tunelab", description="Pretrained language models as task-level "
                                     "functions.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an unexpected error")
    sub = parser.add_subparsers(dest="command", required=True)

    cluster = argparse.ArgumentParser(add_help=False)
    cluster.add_argument("--backend", choices=("local", "ray"), default="local",
                         help="local (this machine; default) or ray (a Ray cluster: pip install tunelab[ray])")
    cluster.add_argument("--workers", type=_positive, default=2,
                         help="ray: training processes (train), trials at once (search), predictor actors (predict)")
    cluster.add_argument("--cpus-per-worker", type=_positive, default=1, help="ray: CPUs each worker reserves and uses")
    cluster.add_argument("--ray-address", help="ray: the cluster (default: RAY_ADDRESS, or the one `ray start` made on "
                         "this machine, else a local Ray for this job)")

    p = sub.add_parser("train", parents=[common, cluster], help="fit from a YAML config (+ key=value overrides): "
                       "fine-tune, setfit, or "
                       "a zero/few-shot prompt artifact (strategy)")
    p.add_argument("config", help="YAML config file (see configs/)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=2 method.name=full")
    p.add_argument("--nproc", type=_positive, default=1, help="train on N processes (distributed data parallel "
                   "under torchrun: gloo on CPU, NCCL on GPUs); train.batch_size stays the global batch")
    p.add_argument("--nnodes", type=_positive, default=1, help="machines taking part (run the same command on each)")
    p.add_argument("--node-rank", type=int, help="this machine's number, 0 .. nnodes-1")
    p.add_argument("--rdzv-endpoint", help="HOST:PORT of the first machine (multi-node rendezvous)")
    p.add_argument("--max-restarts", type=int, default=0, help="restart the workers after a failure this many times; "
                   "they resume from the last checkpoint (train.checkpoint_every); also with --backend ray")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("search", parents=[common, cluster], help="hyperparameter search (Optuna) over the config's search: "
                       "section; resumable; writes best.yaml, trials.csv and plots")
    p.add_argument("config", help="YAML config file with a search: section")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the config, e.g. train.epochs=1")
    p.add_argument("--trials", type=_positive, default=20, help="finished trials the study should have (default 20; "
                   "trials of an earlier, interrupted run count)")
    p.add_argument("--out", help="folder for the trials, study and results (default: the config's output_dir)")
    p.add_argument("--metric", help="validation metric to optimise (default: the task's primary metric)")
    p.add_argument("--direction", choices=("maximize", "minimize"), help="default: from the metric")
    p.add_argument("--sampler", choices=("tpe", "random"), default="tpe")
    p.add_argument("--pruner", choices=("median", "hyperband", "none"), default="median",
                   help="stop hopeless trials at their evaluations (needs train.eval_every or several epochs)")
    p.add_argument("--storage", help="Optuna storage URL shared by workers (default: sqlite:///OUT/study.db)")
    p.add_argument("--study", help="study name (default: tunelab-search)")
    p.add_argument("--keep", choices=("best", "all", "none"), default="best", help="trial artifacts to keep")
    p.add_argument("--timeout", type=float, help="start no new trial after this many seconds")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("runs", parents=[common], help="list the runs under a folder with their metrics, or compare two "
                       "runs side by side (metrics and the config fields that differ)")
    p.add_argument("paths", nargs="*", help="a folder (default: runs), or two run folders to compare")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("eval", help="evaluate an artifact on labelled records", parents=[common, reading])
    p.add_argument("artifact", help="artifact or run directory")
    p.add_argument("data", help="labelled records (.csv .tsv .jsonl .json, CoNLL columns)")
    p.add_argument("--json", action="store_true", help="print all metrics as JSON")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="predict texts (arguments, --file, or stdin) as JSON lines: one line per "
                       "input, in order, with its row number", parents=[common, reading, cluster])
    p.add_argument("artifact", help="artifact or run directory")
    p.add_argument("texts", nargs="*", help="texts to predict for (classify, tag, summarize, ...)")
    p.add_argument("--file", help="records file with the training text column(s), or a .txt file of one text per line "
                   "(--backend ray: also a directory of such files)")
    p.add_argument("--output", help="write JSON lines here (complete, or not at all) instead of stdout")
    p.add_argument("--batch-size", type=_positive, default=64)
    p.add_argument("--on-error", choices=("record", "fail"), default="record",
                   help="an input that cannot be predicted: an error record in its place (default), or stop")
    p.add_argument("--id-column", default="id", help="column copied into each output as its id (default: id)")
    p.add_argument("--chunk", type=_positive, default=1024, help=argparse.SUPPRESS)
    p.add_argument("--resume", action="store_true", help="continue a killed job's --output where it stopped")
    p.add_argument("--stream", action="store_true", help="generation: print the output token by token as it is made")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("explain", help="which words led to each prediction (ig, gradxinput, attention, occlusion, "
                       "lime), as JSON lines and an HTML heat map; --faithfulness measures the methods",
                       parents=[common, reading])
    p.add_argument("artifact", help="artifact or run directory")
    p.add_argument("texts", nargs="*", help="texts to explain (or --file, or stdin)")
    p.add_argument("--file", help="records file with the training text column(s), or a .txt file of one text per line")
    p.add_argument("--method", default="ig", help="ig (default), gradxinput, attention, occlusion or lime")
    p.add_argument("--target", help="the label to explain (default: the predicted one); NER: an entity (TYPE@start:end, "
                   "its text or type); QA: start or end; 'all': every target of each input, a line each")
    p.add_argument("--steps", type=_positive, help="ig: integration steps (default 32)")
    p.add_argument("--html", help="also write the explanations as a self-contained HTML heat map here")
    p.add_argument("--limit", type=_positive, help="explain at most this many inputs")
    p.add_argument("--faithfulness", action="store_true", help="measure comprehensiveness and sufficiency of "
                   "--methods on the inputs, against random words")
    p.add_argument("--methods", default="ig,gradxinput,attention,occlusion,lime", help="with --faithfulness")
    p.add_argument("--k", type=float, default=0.2, help="with --faithfulness: the fraction of words removed or kept")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("analyze", help="error analysis on labelled data: metrics, maps of the data, calibration, "
                       "slices, the task's breakdowns and the hardest examples explained, as an offline HTML report",
                       parents=[common, reading])
    p.add_argument("artifact", help="artifact or run directory")
    p.add_argument("data", help="labelled records (the training columns)")
    p.add_argument("--out", help="folder for analysis.json, the PNGs and report.html (default: ARTIFACT-analysis)")
    p.add_argument("--html", help="write the HTML report here instead of OUT/report.html")
    p.add_argument("--slice", action="append", metavar="SPEC", help="another slice: column:NAME or regex:NAME=PATTERN "
                   "(repeatable; length, negation, numbers and label are always there)")
    p.add_argument("--maps", help="projections, comma-separated: pca, tsne, umap (default: those installed)")
    p.add_argument("--hardest", type=int, default=10, help="how many highest-loss examples to show explained (default 10)")
    p.add_argument("--explain", default="auto", help="method for them: auto (ig, or occlusion for an export), "
                   "ig, gradxinput, attention, occlusion, lime, none")
    p.add_argument("--calibrate", action="store_true", help="store the temperature fitted on DATA in the artifact "
                   "(classification, relation): its scores then mean what they say")
    p.add_argument("--limit", type=_positive, help="analyse a seeded random sample of this many records")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("train-sequence", help="continual learning: learn the tasks of a sequence file in order on one "
                       "shared encoder (naive, replay, ewc, lwf or per-task adapters) and print the forgetting matrix",
                       parents=[common])
    p.add_argument("sequence", help="YAML with tasks: [...], continual: {strategy: ...}, model, output_dir, train")
    p.add_argument("--output-dir", help="where to write it when the file has no output_dir")
    p.set_defaults(func=cmd_train_sequence)

    p = sub.add_parser("attack", help="robustness: attack a classifier's right predictions with character edits "
                       "or synonyms and report accuracy under attack", parents=[common, reading])
    p.add_argument("artifact", help="artifact or run directory")
    p.add_argument("data", help="labelled records (the training columns)")
    p.add_argument("--recipe", default="word", help="char (DeepWordBug-style edits) or word (WordNet synonyms under a "
                   "MiniLM sentence-similarity constraint; default)")
    p.add_argument("--n", type=_positive, default=500, help="attack a seeded sample of this many records (default 500)")
    p.add_argument("--budget", type=float, default=0.25, help="most of a record's words an attack may change (default 0.25)")
    p.add_argument("--similarity", type=float, help="word: minimum sentence cosine to the original (default 0.8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the whole report (with examples) as JSON here")
    p.set_defaults(func=cmd_attack)

    p = sub.add_parser("export", help="export an artifact for fast prediction: ONNX (encoders, optionally int8) or "
                       "the ONNX Runtime GenAI engine (causal LMs, int8 by default)", parents=[common])
    p.add_argument("artifact", help="artifact or run directory")
    p.add_argument("--format", "--to", dest="export_format", default="onnx", choices=("onnx", "onnx-genai"),
                   help="onnx: encoder tasks (default); onnx-genai: generation and prompted NER on a causal LM")
    p.add_argument("--quantize", help="onnx: int8 or fp16-weights (default: fp32); onnx-genai: int8 (default), "
                   "int4 or fp32")
    p.add_argument("--check", help="labelled records: evaluate source and export on them; stop if the metric drops")
    p.add_argument("--check-format", default="auto", choices=FORMATS, help="format of the --check file")
    p.add_argument("--check-encoding", default="utf-8", help="encoding of the --check file (default utf-8)")
    p.add_argument("--max-drop", type=float, default=1.0, help="largest allowed metric drop in points (default 1)")
    p.add_argument("--threads", type=_positive, help="CPU threads (default: all cores)")
    p.add_argument("--output", help="where to write (default: artifact-FORMAT[-QUANTIZE] beside the source)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("compress", help="prune attention heads / feed-forward neurons of a fine-tuned encoder; writes "
                       "an ONNX artifact", parents=[common, reading])
    p.add_argument("artifact", help="artifact or run directory")
    p.add_argument("--prune", required=True, help="shares to remove per layer, e.g. heads=0.3 or heads=0.3,ffn=0.2")
    p.add_argument("--recover", help="labelled records to train the pruned model on before export (recovers accuracy)")
    p.add_argument("--recover-steps", type=_positive, default=200, help="optimizer steps of that training (default 200)")
    p.add_argument("--quantize", help="int8: quantize the pruned model too")
    p.add_argument("--check", help="labelled records: evaluate source and pruned model; stop if the metric drops")
    p.add_argument("--max-drop", type=float, default=1.0, help="largest allowed metric drop in points (default 1)")
    p.add_argument("--output", help="where to write (default: artifact-pruned beside the source)")
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("serve", parents=[common], help="serve artifacts over an HTTP API (API keys, micro-batching, "
                       "metrics); binds to 127.0.0.1 unless told otherwise")
    p.add_argument("models", nargs="*", help="artifacts to serve, as ARTIFACT or NAME=ARTIFACT")
    p.add_argument("--config", help="a YAML file of serve settings (models, host, port, limits, keys_file, ...)")
    p.add_argument("--host", help="address to bind (default 127.0.0.1; another host needs API keys)")
    p.add_argument("--port", type=int, help="TCP port (default 8000)")
    p.add_argument("--keys-file", help="file of hashed API keys (make one with --new-key)")
    p.add_argument("--max-batch-size", type=_positive, help="most inputs per model call (1: no micro-batching)")
    p.add_argument("--max-wait-ms", type=float, help="how long a request waits to share a batch (default 5)")
    p.add_argument("--model-batch-size", type=_positive,
                   help="inputs per forward pass; a batch runs length-sorted in chunks of this size (default 8)")
    p.add_argument("--rate-per-minute", type=int, help="requests per minute per key (default unlimited)")
    p.add_argument("--no-shared-bases", action="store_true",
                   help="load every LoRA artifact with its own copy of the base model (default: they share it)")
    p.add_argument("--no-ui", action="store_true", help="do not serve the web page at /")
    p.add_argument("--new-key", action="store_true", help="print a new API key and its key-file line, then exit")
    p.add_argument("--scopes", help="with --new-key: models the key may use, comma-separated (* = all, admin)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", parents=[common], help="LoRA-tune the packaged MiniLM on the packaged sentiment sample")
    p.add_argument("--output-dir", default="runs/demo")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the demo config")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("info", parents=[common], help="versions, packaged models, or an artifact's manifest")
    p.add_argument("artifact", nargs="?", help="artifact or run directory to describe")
    p.add_argument("--resolve", action="store_true", help="also dequantize/cache packaged GGUF models now")
    p.set_defaults(func=cmd_info)
    return parser



def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, got {number}")
    return number


def main(argv: list[str] | None = None) -> int:
    """Run the CLI. User mistakes print one ``error:`` line (exit 2); unexpected failures say that they are
    internal and that ``--debug`` shows the traceback (exit 1)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Positional lists (texts, overrides) may continue after an option: `predict ART --threads 1 "text"`.
    given = vars(args)
    rest = "texts" if "texts" in given else "overrides" if "overrides" in given else None
    if extra and rest and not any(e.startswith("-") for e in extra):
        setattr(args, rest, [*getattr(args, rest), *extra])
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")

    from .distributed import RankStream, rank_and_size

    rank, size = rank_and_size()
    if size > 1 and rank > 0:  # a distributed run: rank 0 prints the results, the others only what goes wrong
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
        sys.stderr = RankStream(sys.stderr, rank)
    try:
        return args.func(args)
    except TunelabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `tunelab predict ... | head`
        return 0
    except Exception as err:  # noqa: BLE001 - the last line of defence: no traceback unless asked for
        if args.debug:
            raise
        first = (str(err).strip().splitlines() or [""])[0][:300]
        print(f"internal error: {type(err).__name__}: {first}\nthis is a bug in tunelab or a library it uses, not "
              f"in your input; run the same command with --debug to see the traceback", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
