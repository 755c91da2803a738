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

import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from .errors import ArtifactError, disk_error

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
WRITTEN_BY = "tunelab"  # the marker that lets tunelab replace a folder: it wrote it


def library_versions() -> dict[str, str]:
    """Versions of Python and of the libraries an artifact depends on (recorded in its manifest)."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("tunelab", "torch", "transformers", "peft", "accelerate", "tokenizers", "safetensors"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def file_sha256(path: Path) -> str:
    """The sha256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_path(path: Path) -> None:
    """Flush one file or folder to disk (folders: their entries, so a rename is durable)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Flush every file and folder under ``root`` to disk, so a rename that follows publishes complete files."""
    for path in sorted(root.rglob("*"), key=lambda p: -len(p.parts)) + [root]:
        fsync_path(path)


def is_tunelab_artifact(path: Path) -> bool:
    """True when ``path`` holds a manifest that tunelab wrote (the only folders tunelab will replace)."""
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and (manifest.get("written_by") == WRITTEN_BY or "tunelab_version" in manifest)


def write_artifact(target: Path, manifest: dict[str, Any], write_parts: Callable[[Path], None],
                   size_hint: int | None = None) -> Path:
    """Create ``target`` atomically: ``write_parts(staging_dir)`` writes the files, then the manifest (with a
    sha256 of every file) goes in last, everything is flushed to disk and the directory is swapped into place.

    An existing ``target`` is replaced only when it is a tunelab artifact (its manifest says so); anything
    else there is refused, never deleted. ``size_hint`` (bytes) sizes the message when the disk is full.
    """
    target = Path(target)
    if target.exists() and not is_tunelab_artifact(target):
        raise ArtifactError(
            f"{target} already exists and is not a tunelab artifact (no tunelab manifest.json in it): tunelab "
            "replaces only what it wrote. Move it away or set another output_dir; nothing was changed")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    except OSError as err:
        raise disk_error(err, f"creating {target.parent}", target.parent.parent, size_hint) from None
    try:
        write_parts(staging)
        files = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
        manifest = {**manifest, "written_by": WRITTEN_BY, "format_version": FORMAT_VERSION,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "libraries": library_versions(),
                    "files": files, "sha256": {f: file_sha256(staging / f) for f in files}}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
        _fsync_tree(staging)
        if target.exists():
            previous = read_created(target)
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / "previous")
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
            print(f"replaced the previous artifact at {target} (written {previous})", file=sys.stderr)
        else:
            os.replace(staging, target)
    except OSError as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise disk_error(err, f"writing the artifact {target}", target.parent, size_hint) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def update_task_state(artifact_dir: Path, changes: dict[str, Any]) -> dict[str, Any]:
    """Merge ``changes`` into the artifact's stored task state (e.g. a fitted temperature), replacing the
    manifest atomically: a reader sees the old manifest or the new one, never half of one. Returns the new
    manifest."""
    manifest = read_manifest(artifact_dir, verify=False)
    manifest["task"]["state"] = {**manifest["task"].get("state", {}), **changes}
    path = artifact_dir / MANIFEST
    staging = path.with_name(f".{MANIFEST}.tmp-{os.getpid()}")
    try:
        staging.write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
        with open(staging, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(staging, path)
    except OSError as err:
        staging.unlink(missing_ok=True)
        raise disk_error(err, f"updating {path}", artifact_dir, None) from None
    return manifest


def read_created(artifact_dir: Path) -> str:
    """When the artifact at ``artifact_dir`` was written (its manifest's ``created``), for messages."""
    try:
        return str(json.loads((artifact_dir / MANIFEST).read_text(encoding="utf-8")).get("created", "at an unknown time"))
    except (OSError, ValueError):
        return "at an unknown time"


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON (values JSON cannot hold become strings)."""
    path.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")


def write_yaml(path: Path, data: Any) -> None:
    """Write ``data`` as YAML, keys in their given order."""
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


def read_manifest(artifact_dir: Path, *, verify: bool = True) -> dict[str, Any]:
    """The artifact's manifest, after checking that every file it lists is there and (``verify``) has the
    sha256 recorded when it was written. A changed file is named; nothing from it is loaded."""
    try:
        manifest = json.loads((artifact_dir / MANIFEST).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{artifact_dir / MANIFEST} is corrupt: {err}") from None
    except OSError as err:
        raise ArtifactError(f"cannot read {artifact_dir / MANIFEST}: {err.strerror}") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{artifact_dir / MANIFEST} is corrupt: expected a JSON object")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(f"{artifact_dir} has artifact format {version}; this tunelab reads format {FORMAT_VERSION}")
    files = manifest.get("files", [])
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise ArtifactError(f"{artifact_dir / MANIFEST} is corrupt: 'files' must be a list of paths")
    root = artifact_dir.resolve()
    for f in files:
        if not (artifact_dir / f).resolve().is_relative_to(root):
            raise ArtifactError(f"{artifact_dir / MANIFEST} lists {f!r}, which is outside the artifact")
    missing = [f for f in files if not (artifact_dir / f).is_file()]
    if missing:
        raise ArtifactError(f"{artifact_dir} is incomplete: missing {', '.join(missing[:5])}")
    for key in ("task", "strategy", "model_format", "base_model"):
        if key in manifest and manifest[key] is not None and not isinstance(manifest[key], (dict, str)):
            raise ArtifactError(f"{artifact_dir / MANIFEST} is corrupt: field {key!r} has the wrong type")
    if verify:
        verify_files(artifact_dir, manifest)
    return manifest


_VERIFIED: dict[tuple[str, int, int, int, int], str] = {}  # (path, size, mtime, ctime, inode) -> sha256 seen


def verify_files(artifact_dir: Path, manifest: dict[str, Any]) -> None:
    """Compare each listed file with its recorded sha256 (each file hashed once per process unless it
    changes on disk). Artifacts written before integrity checks carry no hashes and load with a note."""
    hashes = manifest.get("sha256")
    if hashes is None:
        print(f"note: {artifact_dir} was written before tunelab recorded file hashes; its files are not verified",
              file=sys.stderr)
        return
    if not isinstance(hashes, dict):
        raise ArtifactError(f"{artifact_dir / MANIFEST} is corrupt: 'sha256' must map files to hashes")
    unlisted = [f for f in manifest.get("files", []) if f not in hashes]
    if unlisted:
        raise ArtifactError(f"{artifact_dir / MANIFEST} records no sha256 for {', '.join(unlisted[:3])}: "
                            "the manifest was edited")
    for name in manifest.get("files", []):
        path = artifact_dir / name
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
        actual = _VERIFIED.get(key) or file_sha256(path)
        if actual != hashes[name]:
            raise ArtifactError(
                f"{path} has changed since the artifact was written (sha256 {actual[:12]}… instead of "
                f"{str(hashes[name])[:12]}…): the file is damaged or was edited. Restore it or train again")
        _VERIFIED[key] = actual
