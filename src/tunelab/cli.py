"""Command line: ``tunelab train | eval | predict | demo | info``.

YAML keys and ``key=value`` overrides map one-to-one onto the validated Config:
``tunelab train configs/sst2_lora.yaml train.epochs=1 method.r=4``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .errors import TunelabError


def cmd_train(args: argparse.Namespace) -> int:
    from .api import fit, summary
    from .config import load_config

    cfg = load_config(args.config, args.overrides)
    run = fit(cfg)
    print(summary(run))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .metrics import scalar_metrics
    from .predict import Predictor

    metrics = Predictor.load(args.artifact).evaluate(args.data)
    if args.json:
        print(json.dumps(metrics, indent=2, default=str))
    else:
        for key, value in scalar_metrics(metrics).items():
            print(f"{key:>18}  {value:.4f}")
        if "per_class" in metrics:
            print("\nper class:")
            for name, row in metrics["per_class"].items():
                print(f"  {name:>16}  p={row['precision']:.3f} r={row['recall']:.3f} f1={row['f1']:.3f} n={row['support']}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .predict import Predictor

    predictor = Predictor.load(args.artifact)
    inputs: Any = Path(args.file) if args.file else list(args.texts)
    if not args.file and not args.texts:
        inputs = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if args.stream:
        if not hasattr(predictor, "stream") or args.file:
            raise TunelabError("--stream works for generation artifacts with texts given as arguments or on stdin")
        for text in inputs:
            for piece in predictor.stream(text):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
        return 0
    predictions = predictor.predict(inputs, batch_size=args.batch_size)
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    try:
        for pred in predictions:
            out.write(json.dumps(pred) + "\n")
    finally:
        if args.output:
            out.close()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.output_dir, args.overrides)


def cmd_info(args: argparse.Namespace) -> int:
    import os

    from .artifact import find_artifact, library_versions, read_manifest
    from .models import PACKAGED, resolve_model

    if args.artifact:
        manifest = read_manifest(find_artifact(args.artifact))
        view = {k: manifest[k] for k in ("tunelab_version", "strategy", "task", "method", "model_format", "base_model", "metrics", "parameters", "libraries") if k in manifest}
        print(json.dumps(view, indent=2, default=str))
        return 0
    import torch

    print("tunelab", library_versions().get("tunelab"))
    for pkg, version in library_versions().items():
        print(f"  {pkg:<13} {version}")
    print(f"torch threads: {torch.get_num_threads()}, cuda: {torch.cuda.is_available()}")
    print(f"network: {'allowed' if os.environ.get('HF_HUB_OFFLINE') in ('0', None) else 'off (HF_HUB_OFFLINE=1)'}")
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
    parser = argparse.ArgumentParser(prog="tunelab", description="Pretrained language models as task-level functions.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="fit from a YAML config (+ key=value overrides): fine-tune, setfit, or "
                       "a zero/few-shot prompt artifact (strategy)")
    p.add_argument("config", help="YAML config file (see configs/)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=2 method.name=full")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate an artifact on labelled records")
    p.add_argument("artifact", help="artifact or run directory")
    p.add_argument("data", help="labelled records (.csv .tsv .jsonl .json)")
    p.add_argument("--json", action="store_true", help="print all metrics as JSON")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="predict texts (arguments, --file, or stdin) as JSON lines")
    p.add_argument("artifact", help="artifact or run directory")
    p.add_argument("texts", nargs="*", help="texts to predict for (classify, tag, summarize, ...)")
    p.add_argument("--file", help="records file with the training text column(s)")
    p.add_argument("--output", help="write JSON lines here instead of stdout")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--stream", action="store_true", help="generation: print the output token by token as it is made")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("demo", help="LoRA-tune the packaged MiniLM on the packaged sentiment sample")
    p.add_argument("--output-dir", default="runs/demo")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the demo config")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("info", help="versions, packaged models, or an artifact's manifest")
    p.add_argument("artifact", nargs="?", help="artifact or run directory to describe")
    p.add_argument("--resolve", action="store_true", help="also dequantize/cache packaged GGUF models now")
    p.set_defaults(func=cmd_info)
    return parser



def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import tunelab  # noqa: F401  (applies the offline default before anything HF is imported)

    try:
        return args.func(args)
    except TunelabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
