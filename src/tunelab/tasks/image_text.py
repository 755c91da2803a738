"""Text + image classification: ``task: {name: classification}`` with ``data.image_column``.

A pretrained text encoder (``model``) and a pretrained image encoder (``task.image_model``: the packaged
``efficientnet-lite0`` or any local Hugging Face vision folder) each pool their input; ``task.fusion`` joins them:

===================  ============================================================================================
``concat``           the two pooled vectors side by side, into an MLP head (late fusion, as AutoGluon does)
``gated``            a learned per-dimension gate mixes the two (a gated multimodal unit, Arevalo et al. 2017)
``cross_attention``  text tokens attend to the image's patches (or feature-map cells), then pool
``text_only``        the text tower alone (ablation; no image needed or read)
``image_only``       the image tower alone (ablation; no text needed or read)
===================  ============================================================================================

Images go through the image model's own ``AutoImageProcessor``, text through the tokenizer. Every mode shares one
head shape (both towers projected to the text encoder's width), so ablations differ only in what they see. The
artifact stores both towers (or the adapter) and both processors; the Predictor takes ``{"text": ..., "image":
path | bytes | data URI}``.

Example:
    >>> import tunelab                                                               # doctest: +SKIP
    >>> run = tunelab.fit(model="minilm", train="products.csv", method="full",       # doctest: +SKIP
    ...                   task={"name": "classification", "fusion": "concat"},
    ...                   data={"text_column": "title", "image_column": "photo"})
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from functools import partial
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from ..config import Config
from ..data import Records, require_column
from ..errors import ConfigError, DataError
from ..images import read_image
from .classification import ClassificationTask
from .common import config_with_dropout, pad_batch

FUSION_CONFIG = "fusion.json"  # in a saved model folder: the fusion's plain-data spec
FUSION_WEIGHTS = "fusion.safetensors"  # the fusion layers and head (the towers sit in text/ and image/)
HEAD = ["image_proj", "fusion_gate", "fusion_attention", "fusion_norm", "fusion_head"]
# LoRA's default targets in each tower: attention query/value projections (BERT, ViT, DeiT: query/value; Llama,
# CLIP: q_proj/v_proj; DistilBERT: q_lin/v_lin) and, in convolutional towers, the 1x1 convolutions of each block
# (EfficientNet: project_conv; ResNet/ConvNeXt-style: pwconv*)
ADAPTED = {"query", "value", "q_proj", "v_proj", "q_lin", "v_lin", "project_conv", "pwconv1", "pwconv2"}
USES = {"concat": ("text", "image"), "gated": ("text", "image"), "cross_attention": ("text", "image"),
        "text_only": ("text",), "image_only": ("image",)}


class ImageTextProcessor:
    """The tokenizer and the image processor of a text+image model, saved side by side in one folder.

    Args:
        tokenizer: the text tokenizer.
        image_processor: the image model's ``AutoImageProcessor`` (None when no image is read).
    """

    def __init__(self, tokenizer: Any, image_processor: Any):
        self.tokenizer = tokenizer
        self.image_processor = image_processor

    def __len__(self) -> int:
        """The tokenizer's vocabulary size (what a shared base's key compares)."""
        return len(self.tokenizer)

    @property
    def pad_token_id(self) -> int:
        """The tokenizer's padding id."""
        return self.tokenizer.pad_token_id or 0

    def pixels(self, images: list[Any]) -> torch.Tensor:
        """RGB images -> the image model's ``pixel_values`` batch."""
        return self.image_processor(images, return_tensors="pt")["pixel_values"]

    def save_pretrained(self, folder: Any) -> None:
        """Write the tokenizer's files and the image processor's ``preprocessor_config.json`` into ``folder``."""
        self.tokenizer.save_pretrained(folder)
        if self.image_processor is not None:
            self.image_processor.save_pretrained(folder)


class FusionClassifier(nn.Module):
    """A text tower and an image tower joined by ``spec["fusion"]`` into one classification head.

    Args:
        text: the text encoder (a transformers ``AutoModel``), or None in ``image_only`` mode.
        image: the image encoder (a transformers vision ``AutoModel``), or None in ``text_only`` mode.
        spec: plain data: ``fusion``, ``num_labels``, ``width`` (the text encoder's hidden size), ``image_width``,
            ``heads`` (cross-attention heads), ``dropout``, ``frozen`` (towers that do not train),
            ``modality_dropout`` (while training, the share of records whose text, and the share whose image, the
            head does not see; default 0).
    """

    base_model_prefix = ""  # peft treats a module with a transformers config as a transformers model: none here

    def __init__(self, text: nn.Module | None, image: nn.Module | None, spec: dict[str, Any]):
        super().__init__()
        self.spec = dict(spec)
        fusion, width, p = spec["fusion"], spec["width"], spec["dropout"]
        self.text, self.image = text, image
        self.config = (text if text is not None else image).config  # what peft reads
        self.image_proj = nn.Linear(spec["image_width"], width) if image is not None else None
        self.fusion_gate = nn.Linear(2 * width, width) if fusion == "gated" else None
        self.fusion_attention = (nn.MultiheadAttention(width, spec["heads"], dropout=p, batch_first=True)
                                 if fusion == "cross_attention" else None)
        self.fusion_norm = nn.LayerNorm(width) if fusion == "cross_attention" else None
        joined = 2 * width if fusion in ("concat", "cross_attention") else width
        self.fusion_head = nn.Sequential(nn.Dropout(p), nn.Linear(joined, width), nn.GELU(), nn.Dropout(p),
                                         nn.Linear(width, spec["num_labels"]))
        for tower in spec.get("frozen", []):
            module = getattr(self, tower)
            if module is not None:
                module.requires_grad_(False)
        self._image_cache: dict[bytes, torch.Tensor] | None = None  # see caching_image_outputs
        self._image_cache_room = 0

    @contextlib.contextmanager
    def caching_image_outputs(self, limit_mb: int) -> Iterator[None]:
        """Within the block a frozen image tower runs once per distinct image: its output is kept (up to
        ``limit_mb`` MB) and reused by later batches, epochs and evaluations; it is dropped when the block ends.

        A frozen tower is in eval mode and does not train, so its output for an image never changes: the results
        are those of running it every time. A tower with any trainable weight (LoRA) is run every time.

        Args:
            limit_mb: the most memory the kept outputs may take; 0 keeps nothing.
        """
        self._image_cache, self._image_cache_room = {}, int(limit_mb) << 20
        try:
            yield
        finally:
            self._image_cache, self._image_cache_room = None, 0

    def _run_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The image tower's output as tokens (B, N, C); a convolutional feature map's cells are its tokens."""
        hidden = self.image(pixel_values=pixel_values).last_hidden_state
        return hidden.flatten(2).transpose(1, 2) if hidden.dim() == 4 else hidden

    def _image_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        cache = self._image_cache
        if cache is None or any(p.requires_grad for p in self.image.parameters()):
            return self._run_image(pixel_values)
        keys = [hashlib.blake2b(v.contiguous().numpy().tobytes(), digest_size=16).digest()
                for v in pixel_values.detach().cpu()]
        missing = [i for i, key in enumerate(keys) if key not in cache]
        fresh: dict[bytes, torch.Tensor] = {}
        if missing:
            with torch.no_grad():
                computed = self._run_image(pixel_values[missing])
            for i, tokens in zip(missing, computed):
                fresh[keys[i]] = tokens
                size = tokens.numel() * tokens.element_size()
                if size <= self._image_cache_room and keys[i] not in cache:
                    cache[keys[i]] = tokens.clone()
                    self._image_cache_room -= size
        return torch.stack([cache[key] if key in cache else fresh[key] for key in keys])

    def train(self, mode: bool = True) -> FusionClassifier:
        """As ``nn.Module.train``; a frozen tower stays in eval mode (its batch-norm statistics do not move)."""
        super().train(mode)
        for tower in self.spec.get("frozen", []):
            module = getattr(self, tower)
            if module is not None:
                module.eval()
        return self

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, output_hidden_states: bool = False, **_: Any) -> Any:
        """Logits for a batch (``SequenceClassifierOutput``); with ``output_hidden_states`` its ``hidden_states`` is
        ``(joined,)``: the vector the fusion head reads."""
        from transformers.modeling_outputs import SequenceClassifierOutput

        fusion = self.spec["fusion"]
        text_tokens = text_pooled = image_tokens = image_pooled = None
        if self.text is not None:
            kwargs = {"attention_mask": attention_mask}
            if token_type_ids is not None:
                kwargs["token_type_ids"] = token_type_ids
            if inputs_embeds is not None:
                kwargs["inputs_embeds"] = inputs_embeds
            else:
                kwargs["input_ids"] = input_ids
            text_tokens = self.text(**kwargs).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(text_tokens.dtype)
            text_pooled = (text_tokens * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        if self.image is not None:
            if pixel_values is None:
                raise DataError("this model reads an image with each text: the batch has no pixel_values")
            image_tokens = self.image_proj(self._image_tokens(pixel_values))
            image_pooled = image_tokens.mean(1)
        if self.training and self.spec.get("modality_dropout", 0.0) and fusion in ("concat", "gated",
                                                                                   "cross_attention"):
            text_kept, image_kept = self._modality_masks(len(image_pooled), image_pooled)
            text_pooled, image_pooled = text_pooled * text_kept, image_pooled * image_kept
            if fusion == "cross_attention":  # the attended text carries the image too: hide both parts
                text_tokens = text_tokens * text_kept.unsqueeze(1)
                image_tokens = image_tokens * image_kept.unsqueeze(1)
        if fusion == "text_only":
            joined = text_pooled
        elif fusion == "image_only":
            joined = image_pooled
        elif fusion == "concat":
            joined = torch.cat([text_pooled, image_pooled], dim=-1)
        elif fusion == "gated":
            gate = torch.sigmoid(self.fusion_gate(torch.cat([text_pooled, image_pooled], dim=-1)))
            joined = gate * torch.tanh(text_pooled) + (1 - gate) * torch.tanh(image_pooled)
        else:  # cross_attention
            attended, _ = self.fusion_attention(text_tokens, image_tokens, image_tokens, need_weights=False)
            mixed = self.fusion_norm(text_tokens + attended)
            mask = attention_mask.unsqueeze(-1).to(mixed.dtype)
            joined = torch.cat([(mixed * mask).sum(1) / mask.sum(1).clamp(min=1.0), image_pooled], dim=-1)
        return SequenceClassifierOutput(logits=self.fusion_head(joined),
                                        hidden_states=(joined,) if output_hidden_states else None)

    def _modality_masks(self, n: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-record (n, 1) masks for modality dropout: a share ``p`` of the records loses its text, another share
        ``p`` its image, the rest keep both (no record loses both)."""
        p = float(self.spec["modality_dropout"])
        draw = torch.rand(n, 1, device=like.device)
        text_kept = (draw >= p).to(like.dtype)
        image_kept = ((draw < p) | (draw >= 2 * p)).to(like.dtype)
        return text_kept, image_kept

    def get_input_embeddings(self) -> nn.Module | None:
        """The text tower's word embeddings (explanations and peft read them); None in ``image_only`` mode."""
        return self.text.get_input_embeddings() if self.text is not None else None

    def enable_input_require_grads(self) -> None:
        """What peft calls before adapting: the text tower's word embeddings' outputs require grad (gradient
        checkpointing then reaches the adapters); an image_only model has none."""
        if self.text is not None:
            self.text.enable_input_require_grads()

    def save_pretrained(self, folder: Any, **_: Any) -> None:
        """Write ``fusion.json``, the towers (``text/``, ``image/``, as transformers folders) and the fusion layers."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("text", "image"):
            tower = getattr(self, name)
            if tower is not None:
                tower.save_pretrained(folder / name, safe_serialization=True)
        own = {k: v.detach().contiguous() for k, v in self.state_dict().items()
               if not k.startswith(("text.", "image."))}
        save_file(own, str(folder / FUSION_WEIGHTS))
        (folder / FUSION_CONFIG).write_text(json.dumps(self.spec, indent=1))


def tower_width(config: Any) -> int:
    """The width of a tower's last hidden state from its config (``hidden_size``, ``hidden_dim`` or the last of
    ``hidden_sizes``)."""
    for key in ("hidden_size", "hidden_dim"):
        if isinstance(getattr(config, key, None), int):
            return int(getattr(config, key))
    sizes = getattr(config, "hidden_sizes", None)
    if sizes:
        return int(sizes[-1])
    raise ConfigError(f"cannot tell the output width of a {type(config).__name__} image model (no hidden_size, "
                      "hidden_dim or hidden_sizes in its config)")


def attention_heads(width: int, config: Any) -> int:
    """Cross-attention heads: the text encoder's own count when it divides ``width``, else one."""
    heads = getattr(config, "num_attention_heads", 1) or 1
    return heads if width % heads == 0 else 1


class ImageTextClassificationTask(ClassificationTask):
    """Classification of a text together with an image (``data.image_column``); see the module docstring."""

    strategies = ("finetune",)
    peft_task_type = None  # its own head: peft trains it as modules_to_save
    default_head_learning_rate = 1e-3  # the fusion layers and MLP head start from random weights
    export_formats = ()
    export_note = "text+image models are not exported yet: serve the PyTorch artifact"

    @classmethod
    def from_training_data(cls, cfg: Config, train: Records) -> ImageTextClassificationTask:
        o = cfg.task
        if o.problem_type != "single_label":
            raise ConfigError("task.problem_type: text+image classification is single_label for now")
        base = super().from_training_data(cfg, train)  # the label space; inputs checked by _require_inputs
        fusion = o.fusion or "concat"
        return cls({**base.state, "image_column": cfg.data.image_column, "fusion": fusion,
                    "image_model": o.image_model or "efficientnet-lite0", "frozen": sorted(set(o.frozen)),
                    "image_cache_mb": o.image_cache_mb, "modality_dropout": o.modality_dropout})

    @classmethod
    def _require_inputs(cls, cfg: Config, train: Records) -> None:
        d = cfg.data
        uses = USES[cfg.task.fusion or "concat"]
        if "text" in uses:
            super()._require_inputs(cfg, train)
        if "image" in uses:
            require_column(train, d.image_column, "images", "data.image_column")
        if cfg.task.modality_dropout and len(uses) < 2:
            raise ConfigError(f"task.modality_dropout hides one input of two: fusion {cfg.task.fusion!r} reads one")
        for tower in cfg.task.frozen:
            if tower not in uses:
                raise ConfigError(f"task.frozen: {tower!r} is not used by fusion {cfg.task.fusion or 'concat'!r}")

    def uses(self, tower: str) -> bool:
        """Whether this model reads ``tower`` (``text`` or ``image``)."""
        return tower in USES[self.state["fusion"]]

    def input_columns(self) -> list[str]:
        return [self.state[f"{t}_column"] for t in USES[self.state["fusion"]]]

    def media_columns(self) -> dict[str, str]:
        return {self.state["image_column"]: "image"} if self.uses("image") else {}

    def input_row(self, item: Any) -> dict[str, Any]:
        if self.input_columns() == [self.state["image_column"]] and not isinstance(item, dict):
            return {self.state["image_column"]: item}
        if self.uses("image"):
            raise DataError(f"this model reads a text and an image: give dicts with {self.state['text_column']!r} "
                            f"and {self.state['image_column']!r}")
        return super().input_row(item)

    def explains_words(self) -> bool:
        return self.uses("text")

    def explain_inputs(self, processor: Any, record: dict[str, Any], target: str, prediction: dict[str, Any]) -> Any:
        """The text's batch as for text classification, with the record's image as ``pixel_values``."""
        inputs = super().explain_inputs(processor.tokenizer, record, target, prediction)
        if self.uses("image"):
            column = self.state["image_column"]
            image = read_image(record.get(column), Path.cwd(), f"input, column {column!r}")
            inputs.batch["pixel_values"] = processor.pixels([image])
        return inputs

    def stratify_keys(self, records: Records) -> list[str] | None:
        return [str(r.get(self.state["label_column"])).strip() for r in records.rows]

    def export_example(self) -> list[dict[str, Any]]:
        raise ConfigError(self.export_note)

    # ---- processing ---------------------------------------------------------------------------------------
    def load_processor(self, path: Any) -> ImageTextProcessor:
        """The tokenizer at ``path``; the image processor saved beside it, else the image model's own."""
        from transformers import AutoImageProcessor

        from ..models import load_pretrained, quiet_loading, resolve_model

        tokenizer = super().load_processor(path)
        if not self.uses("image"):
            return ImageTextProcessor(tokenizer, None)
        folder = Path(path) if isinstance(path, (str, Path)) and (Path(path) / "preprocessor_config.json").is_file() \
            else resolve_model(self.state["image_model"]).path
        if isinstance(folder, Path) and not (folder / "preprocessor_config.json").is_file():  # (a hub id: downloaded)
            raise ConfigError(f"task.image_model {self.state['image_model']!r}: {folder} has no image processor; add "
                              "the model's preprocessor_config.json (its resize, crop and normalisation) to the folder")
        with quiet_loading():
            image_processor = load_pretrained(AutoImageProcessor, folder)
        return ImageTextProcessor(tokenizer, image_processor)

    def adapter_targets(self, model: nn.Module) -> list[str] | None:
        """LoRA targets: the query/value projections (or 1x1 convolutions) of every tower that reads and trains."""
        towers = [t for t in USES[self.state["fusion"]] if t not in self.state.get("frozen", [])]
        names = [name for name, module in model.named_modules()
                 if name.split(".")[0] in towers and name.rsplit(".", 1)[-1] in ADAPTED
                 and isinstance(module, (nn.Linear, nn.Conv2d))]
        return names

    def base_identity(self) -> tuple:
        """The fusion, the image model and the frozen towers: adapters share a base only when all three agree."""
        return (self.state["fusion"], self.state["image_model"], tuple(self.state.get("frozen", [])))

    def frozen_modules(self) -> list[str]:
        """The towers ``task.frozen`` names."""
        return [t for t in self.state.get("frozen", []) if self.uses(t)]

    def training_scope(self, model: nn.Module) -> contextlib.AbstractContextManager:
        """With a frozen image tower: its outputs kept while the loop runs (``task.image_cache_mb``)."""
        limit = int(self.state.get("image_cache_mb", 0))
        fusion = next((m for m in model.modules() if isinstance(m, FusionClassifier)), None)
        if "image" not in self.frozen_modules() or not limit or fusion is None:
            return contextlib.nullcontext()
        return fusion.caching_image_outputs(limit)

    def unknown_token_rate(self, processor: Any, features: list[dict[str, Any]]) -> float | None:
        return super().unknown_token_rate(processor.tokenizer, features) if self.uses("text") else None

    def encode(self, records: Records, processor: Any, *, with_labels: bool) -> list[dict[str, Any]]:
        s = self.state
        if self.uses("text"):
            features = super().encode(records, processor.tokenizer, with_labels=with_labels)
        else:
            features = [{"input_ids": []} for _ in records.rows]
            if with_labels:
                require_column(records, s["label_column"], "labels", "data.label_column")
                for i, row in enumerate(records.rows):
                    features[i]["labels"] = self._label_value(row.get(s["label_column"]), records, i)
        if self.uses("image"):
            column = s["image_column"]
            require_column(records, column, "images", "data.image_column")
            base = Path(records.source).parent if Path(records.source).is_file() else Path.cwd()
            for i, row in enumerate(records.rows):
                where = f"{records.where(i)}, column {column!r}"
                value = row.get(column)
                if value is None or (isinstance(value, float) and np.isnan(value)):
                    raise DataError(f"{where}: no image; this model reads one with every record")
                read_image(value, base, where)  # fails now, naming the record, rather than mid-training
                features[i]["image"] = (_absolute(value, base), where)
        return features

    def collate(self, processor: Any) -> Any:
        text = partial(pad_batch, pad_token_id=processor.pad_token_id, label_dtype=torch.long)
        if not self.uses("image"):
            return text

        def collate(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
            batch = text([{k: v for k, v in f.items() if k != "image"} for f in features])
            images = [read_image(value, Path.cwd(), where) for value, where in (f["image"] for f in features)]
            batch["pixel_values"] = processor.pixels(images)
            return batch
        return collate

    def feature_length(self, feature: dict[str, Any]) -> int:
        return max(1, len(feature["input_ids"]))

    def representations(self, model: nn.Module, processor: Any, records: Records, rows: list[dict[str, Any]],
                        batch_size: int = 32) -> np.ndarray:
        """The vector the fusion head reads for each record: the text's, the image's or both joined, as
        ``task.fusion`` joins them (the analysis maps show the data as the whole model sees it)."""
        from ..inference import batched

        collate = self.collate(processor)

        def run(chunk: list[dict[str, Any]]) -> list[np.ndarray]:
            batch = collate(chunk)
            batch.pop("labels", None)
            return list(model(**batch, output_hidden_states=True).hidden_states[-1].float().numpy())

        features = self.encode(records, processor, with_labels=False)
        return np.asarray(batched(model, features, run, batch_size=batch_size, length=self.feature_length,
                                  desc="representations"), dtype=np.float32)

    # ---- model ------------------------------------------------------------------------------------------------
    def build_model(self, model_path: Any, dropout: float | None) -> tuple[nn.Module, list[str]]:
        """Both pretrained towers (a fresh fusion head), or a saved text+image model folder."""
        from safetensors.torch import load_file
        from transformers import AutoModel

        from ..models import load_pretrained, quiet_loading, resolve_model

        saved = isinstance(model_path, (str, Path)) and (Path(model_path) / FUSION_CONFIG).is_file()
        if saved:  # a trained text+image model: its towers in text/ and image/, the fusion's shape in fusion.json
            spec = json.loads((Path(model_path) / FUSION_CONFIG).read_text())
            text_path, image_path = Path(model_path) / "text", Path(model_path) / "image"
        else:
            text_config = config_with_dropout(model_path, None)
            width = tower_width(text_config)
            spec = {"fusion": self.state["fusion"], "num_labels": len(self.labels), "width": width,
                    "heads": attention_heads(width, text_config), "frozen": self.state.get("frozen", []),
                    "dropout": 0.1 if dropout is None else float(dropout),
                    "modality_dropout": float(self.state.get("modality_dropout", 0.0))}
            text_path = model_path
            image_path = resolve_model(self.state["image_model"]).path if self.uses("image") else None
        with quiet_loading():
            text = (load_pretrained(AutoModel, text_path, config=config_with_dropout(text_path, dropout))
                    if self.uses("text") else None)
            image = load_pretrained(AutoModel, image_path) if self.uses("image") else None
        spec["image_width"] = tower_width(image.config) if image is not None else 0
        model = FusionClassifier(text, image, spec)
        if saved:
            missing, unexpected = model.load_state_dict(load_file(str(Path(model_path) / FUSION_WEIGHTS)), strict=False)
            if unexpected or any(not k.startswith(("text.", "image.")) for k in missing):
                raise ConfigError(f"{model_path}: {FUSION_WEIGHTS} does not match this task's fusion "
                                  f"({self.state['fusion']}): {(unexpected or missing)[:3]}")
        return model, [h for h in HEAD if getattr(model, h) is not None]


def _absolute(value: Any, base: Path) -> Any:
    """A relative image path made absolute (collate reads it later, from any working directory)."""
    if isinstance(value, dict) and value.get("bytes") is None and value.get("path"):
        value = value["path"]
    if isinstance(value, str) and not value.strip().startswith("data:") and "://" not in value:
        path = Path(value).expanduser()
        return str(path if path.is_absolute() else base / path)
    return value
