"""Structured pruning of a fine-tuned encoder: attention heads and feed-forward neurons, removed (not masked),
so the pruned model is smaller and faster; written as an ONNX artifact (optionally int8) that
``Predictor.load`` opens.

In every transformer layer the same share of heads and of feed-forward neurons is removed, the least
important first: a head's importance is the norm of its query, key, value and output-projection weights; a
neuron's is the norm of its input row times the norm of its output column (magnitude importance, no data
needed). The pruned layers are sliced copies of the originals (``torch.nn.Linear`` with the kept rows and
columns), then optionally trained for a few steps on labelled records to recover (``recover=DATA``,
``recover_steps``: tunelab's training loop, the source's task loss), and the result goes through the same export
as ``tunelab export``, ``--check`` included (pruning costs accuracy: check it, and set ``--max-drop`` to what
you accept).

Example:
    >>> path = tunelab.compress("runs/sst2", heads=0.3, check="dev.tsv", max_drop=2)   # doctest: +SKIP
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError
from .export import exportable_model, write_onnx
from .predictor import Predictor


def _slice(layer: torch.nn.Linear, keep: torch.Tensor, dim: int) -> torch.nn.Linear:
    """A copy of ``layer`` with only the ``keep`` output rows (dim 0) or input columns (dim 1)."""
    weight = layer.weight.detach().index_select(dim, keep).clone()
    bias = layer.bias.detach().clone() if layer.bias is not None else None
    if dim == 0 and bias is not None:
        bias = bias.index_select(0, keep)
    out = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    out.weight.data.copy_(weight)
    if bias is not None:
        out.bias.data.copy_(bias)
    return out


def _layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer layers of a BERT-family encoder (self-attention query/key/value, intermediate)."""
    layers = [m for m in model.modules()
              if all(hasattr(m, part) for part in ("attention", "intermediate", "output"))]
    if not layers:
        raise ConfigError(f"pruning works on BERT-family encoders (MiniLM, BERT, RoBERTa); {type(model).__name__} "
                          "has no such layers")
    return layers


def _head_norms(weight: torch.Tensor, heads: int, size: int) -> torch.Tensor:
    """Squared norm of each head's block of rows of ``weight`` ([heads * size, ...])."""
    return weight.detach().reshape(heads, size, -1).pow(2).sum((1, 2))


def prune_heads(model: torch.nn.Module, fraction: float) -> int:
    """Remove ``fraction`` of the attention heads of every layer, the least important first; returns how many."""
    removed = 0
    for layer in _layers(model):
        att, out = layer.attention.self, layer.attention.output.dense
        size = att.attention_head_size
        heads = att.query.out_features // size
        drop = min(heads - 1, int(round(heads * fraction)))
        if drop <= 0:
            continue
        importance = sum(_head_norms(m.weight, heads, size) for m in (att.query, att.key, att.value)) \
            + _head_norms(out.weight.t(), heads, size)
        kept_heads = torch.sort(torch.topk(importance, heads - drop).indices).values
        keep = (kept_heads[:, None] * size + torch.arange(size)[None, :]).reshape(-1)
        att.query, att.key, att.value = (_slice(m, keep, 0) for m in (att.query, att.key, att.value))
        layer.attention.output.dense = _slice(out, keep, 1)
        att.num_attention_heads, att.all_head_size = heads - drop, (heads - drop) * size
        removed += drop
    return removed


def prune_ffn(model: torch.nn.Module, fraction: float) -> int:
    """Remove ``fraction`` of the feed-forward neurons of every layer, the least important first."""
    removed = 0
    for layer in _layers(model):
        up, down = layer.intermediate.dense, layer.output.dense
        drop = min(up.out_features - 1, int(round(up.out_features * fraction)))
        if drop <= 0:
            continue
        importance = up.weight.detach().norm(dim=1) * down.weight.detach().norm(dim=0)
        keep = torch.sort(torch.topk(importance, up.out_features - drop).indices).values
        layer.intermediate.dense, layer.output.dense = _slice(up, keep, 0), _slice(down, keep, 1)
        removed += drop
    return removed


def recover(model: torch.nn.Module, source: Predictor, data: Any, steps: int, learning_rate: float = 5e-5,
            seed: int = 42) -> dict[str, Any]:
    """Train the pruned ``model`` for ``steps`` optimizer steps on labelled ``data`` with the source's task loss
    and training settings (tunelab's loop, best step kept by a held-out tenth); returns what the loop measured."""
    import tempfile

    from .config import TrainConfig
    from .data import read_records, split_validation
    from .train import LoopInputs, train_loop

    task, processor = source.task, source.processor
    records = read_records(data)
    train_part, held_out = split_validation(records, 0.1, seed, task.stratify_keys(records))
    cfg = TrainConfig(max_steps=steps, batch_size=32, learning_rate=learning_rate, eval_every=max(1, steps // 4),
                      seed=seed)
    for p in model.parameters():
        p.requires_grad_(True)
    with tempfile.TemporaryDirectory(prefix=".tunelab-recover-") as run_dir:
        result = train_loop(LoopInputs(
            model=model, task=task, processor=processor,
            train_features=task.encode(train_part, processor, with_labels=True),
            val_features=task.encode(held_out, processor, with_labels=True), train=cfg, learning_rate=learning_rate,
            head_names=[], run_dir=Path(run_dir)))
    model.eval()
    return {"steps": result.steps, "records": len(train_part), "learning_rate": learning_rate,
            "best_step": result.best_step, result.metric_name: result.best_metric}


def compress(artifact: str | Path, output: str | Path | None = None, *, heads: float = 0.0, ffn: float = 0.0,
             recover_data: Any = None, recover_steps: int = 200, quantize: str | None = None, check: Any = None,
             max_drop: float = 1.0) -> Path:
    """Prune a fine-tuned encoder artifact's heads and feed-forward neurons and write it as an ONNX artifact.

    Args:
        artifact: a fine-tuned encoder artifact (classification, NER, relation extraction, QA).
        output: where to write (default: ``artifact-pruned`` beside the source).
        heads: the share of attention heads to remove in every layer (0 <= heads < 1).
        ffn: the share of feed-forward neurons to remove in every layer.
        recover_data: labelled records to train the pruned model on before export (None: no recovery).
        recover_steps: optimizer steps of that recovery training.
        quantize: ``"int8"`` to quantize the pruned model too.
        check: labelled records to compare source and pruned model on.
        max_drop: the largest allowed drop of the primary metric, in points.

    Returns:
        the compressed artifact's directory.

    Example:
        >>> compress("runs/sst2", heads=0.5, check="dev.tsv", max_drop=3)   # doctest: +SKIP
    """
    for name, value in (("heads", heads), ("ffn", ffn)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"prune {name}={value}: give a share between 0 and 1 (e.g. {name}=0.3)")
    if not heads and not ffn:
        raise ConfigError("nothing to prune: give heads=... and/or ffn=... (shares between 0 and 1)")
    source = Predictor.load(artifact)
    model = copy.deepcopy(exportable_model(source))  # the source stays intact for the check
    before = sum(p.numel() for p in model.parameters())
    removed = {"heads": prune_heads(model, heads) if heads else 0, "ffn_neurons": prune_ffn(model, ffn) if ffn else 0}
    after = sum(p.numel() for p in model.parameters())
    recovery = recover(model, source, recover_data, recover_steps) if recover_data is not None else None
    target = Path(output) if output else source.path.parent / "artifact-pruned"
    return write_onnx(source, model, target, quantize=quantize, check=check, max_drop=max_drop,
                      extra={"compression": {"heads": heads, "ffn": ffn, "removed": removed,
                                             "parameters_before": before, "parameters_after": after,
                                             "importance": "weight magnitude", "recovery_training": recovery}})
