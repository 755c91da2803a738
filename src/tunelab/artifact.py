"""A self-describing artifact directory, written atomically.

Layout::

    manifest.json   tunelab version, task + label map, method, base model, config, metrics, library versions
    model/          full weights (safetensors, loads with AutoModelFor...) or a peft adapter incl. the task head
    tokenizer/      the tokenizer used at training time
    config.yaml     the validated config of the run
    metrics.json    validation (and test) metrics
    plots/*.png     training curves, confusion matrix

Written into a temporary sibling directory and renamed into place: a crash never leaves a directory
that loads half, and a previous artifact at the same path is replaced only once the new one is complete.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from .errors import ArtifactError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("tunelab", "torch", "transformers", "peft", "accelerate", "tokenizers", "safetensors"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def write_artifact(target: Path, manifest: dict[str, Any], write_parts: Callable[[Path], None]) -> Path:
    """Create ``target`` atomically: ``write_parts(staging_dir)`` writes the files, then the manifest
    goes in last and the directory is swapped into place."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        write_parts(staging)
        manifest = {**manifest, "format_version": FORMAT_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "libraries": library_versions(),
                    "files": sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / "previous")
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")


def write_yaml(path: Path, data: Any) -> None:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def find_artifact(path: str | Path) -> Path:
    """Accept the artifact directory itself or a run directory that holds ``artifact/``."""
    path = Path(path)
    for candidate in (path, path / "artifact"):
        if (candidate / MANIFEST).is_file():
            return candidate
    if not path.exists():
        raise ArtifactError(f"{path} does not exist")
    raise ArtifactError(f"{path} is not a tunelab artifact: no {MANIFEST} in it or in {path / 'artifact'}")


def read_manifest(artifact_dir: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((artifact_dir / MANIFEST).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{artifact_dir / MANIFEST} is corrupt: {err}") from None
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(f"{artifact_dir} has artifact format {version}; this tunelab reads format {FORMAT_VERSION}")
    missing = [f for f in manifest.get("files", []) if not (artifact_dir / f).is_file()]
    if missing:
        raise ArtifactError(f"{artifact_dir} is incomplete: missing {', '.join(missing[:5])}")
    return manifest
