"""Explanations: which words of an input led the model to a prediction, by one of several attribution methods,
and how faithful those attributions are.

An explanation is over the *words* of one input text (``tasks.words.split_words``, with character offsets),
for one *target*: a label (classification, relation, prompted classification), a predicted entity (NER:
``TYPE@start:end``) or the start or end of the predicted answer (QA; the text is the question and the context).
Label tasks score a target on predictions (``Task.explain_score``); NER and QA on the model's own outputs
(``Task.explain_inputs``). Methods are registered by name in ``EXPLAINERS``:

- ``occlusion``: each word removed in turn; its attribution is how much the target's probability drops
  (captum's ``FeatureAblation`` idea over words). Label tasks run it through ``predict``, so ONNX artifacts too;
  NER and QA replace the word's tokens by padding on the model, keeping positions.
- ``lime``: captum's ``Lime`` over word masks (a linear model fitted to predictions on random subsets of the
  words; label tasks, through ``predict``).
- ``ig``: captum's ``LayerIntegratedGradients`` on the embedding layer, from a baseline where every word's
  tokens are ``[PAD]`` (special tokens kept), with the convergence delta reported; sub-token scores are summed
  into words. Needs a PyTorch model and a task with ``explain_inputs``.
- ``gradxinput``: gradient x input on the embedding layer (captum's ``LayerGradientXActivation``), summed into
  words — one backward pass.
- ``attention``: attention rollout (Abnar & Zuidema 2020) from the target's tokens ([CLS] for labels) — a cheap
  view, not a faithful attribution.

Faithfulness (``faithfulness``, label tasks): ERASER's comprehensiveness (the drop in the target's probability
when the top-k% attributed words are removed) and sufficiency (the drop when only they are kept), per method and
for random words of the same number — an attribution method is worth reading when it beats random.

Example:
    >>> predictor.explain("a gripping, funny film", method="ig")["words"][:2]      # doctest: +SKIP
    [{'word': 'a', 'start': 0, 'end': 1, 'attribution': 0.01}, {'word': 'gripping', ...}]
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .errors import ConfigError, DataError
from .registry import Registry
from .tasks.words import split_words

Predict = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]


@dataclass
class Subject:
    """What one explanation is about: the record, its prediction, the text whose words are attributed (from
    ``column``), those words (with character offsets; words inside ``protected`` spans such as entity markers are
    never removed), the target and its probability on the whole input."""

    record: dict[str, Any]
    prediction: dict[str, Any]
    column: str
    text: str
    words: list[str]
    offsets: list[tuple[int, int]]
    protected: list[tuple[int, int]]
    target: str
    score: float

    def keeping(self, keep: list[bool]) -> dict[str, Any]:
        """The record with only the words where ``keep`` is true (and everything protected) left in the text."""
        spans = sorted([(a, b, k) for (a, b), k in zip(self.offsets, keep)] + [(a, b, True) for a, b in self.protected])
        return {**self.record, self.column: " ".join(self.text[a:b] for a, b, kept in spans if kept)}

    def replacing(self, changes: dict[int, str]) -> dict[str, Any]:
        """The record with word ``i`` replaced by ``changes[i]``; everything between the words stays as it was."""
        text, at, parts = self.text, 0, []
        for i in sorted(changes):
            a, b = self.offsets[i]
            parts += [text[at:a], changes[i]]
            at = b
        return {**self.record, self.column: "".join(parts) + text[at:]}


@dataclass
class Model:
    """What the methods may use: ``predict`` (always), and for gradient methods the PyTorch model, its
    processor and task (None when the artifact runs on another runtime)."""

    task: Any
    predict: Predict
    torch_model: torch.nn.Module | None = None
    processor: Any = None

    def scores(self, subject: Subject, records: list[dict[str, Any]], batch: int = 64) -> np.ndarray:
        """The target's probability for each record (predicted in batches)."""
        out: list[float] = []
        for at in range(0, len(records), batch):
            for prediction in self.predict(records[at: at + batch]):
                if "error" in prediction:  # e.g. nothing left to predict from: the target has no support
                    out.append(0.0)
                else:
                    out.append(self.task.explain_score(prediction, subject.target))
        return np.asarray(out, dtype=np.float64)


Explainer = Callable[[Model, Subject, dict[str, Any]], dict[str, Any]]
EXPLAINERS: Registry[Explainer] = Registry("explainer")


def register_explainer(name: str, explainer: Explainer, *, replace: bool = False) -> Explainer:
    """Add an attribution method: ``explainer(model, subject, options)`` returns ``{"attributions": [one value
    (or None) per word of subject.words], ...extra fields}``.

    Example:
        >>> def first_word(model, subject, options):
        ...     return {"attributions": [1.0] + [0.0] * (len(subject.words) - 1)}
        >>> _ = register_explainer("first_word", first_word)
    """
    return EXPLAINERS.add(name, explainer, replace=replace)


def subject_for(model: Model, record: dict[str, Any], target: str | None) -> Subject:
    """The Subject for one record: its words, and the target (default: the predicted label, the first entity,
    the answer's start), checked."""
    task = model.task
    column = task.explain_column(record)
    text = task.explain_text(record)
    (prediction,) = model.predict([record])
    if "error" in prediction:
        raise DataError(f"cannot predict for this input: {prediction['error']}")
    target = task.explain_resolve_target(prediction, target)
    protected = task.explain_protected(text)
    words, offsets = [], []
    for word, (a, b) in zip(*split_words(text)):
        if not any(a < pe and ps < b for ps, pe in protected):
            words.append(word)
            offsets.append((a, b))
    if not words:
        raise DataError(f"column {column!r}: no words to attribute in {text[:60]!r}")
    subject = Subject(record, prediction, column, text, words, offsets, protected, target, 0.0)
    if task.explains_by_prediction:
        subject.score = float(task.explain_score(prediction, target))
    else:
        inputs = model_inputs(model, subject, "explanations")
        with torch.no_grad():
            subject.score = float(inputs.score(model.torch_model(**inputs.batch))[0])
    return subject


def explain_record(model: Model, record: dict[str, Any], method: str = "ig", target: str | None = None,
                   **options: Any) -> dict[str, Any]:
    """One explanation: ``{"method", "target", "score", "column", "text", "words": [{"word", "start", "end",
    "attribution"}], "targets", ...}`` (``targets``: what else this prediction can be explained for; ``ig`` adds
    ``convergence_delta``; words the model did not see, past its ``max_length``, get ``attribution: None`` and a
    ``note``)."""
    explainer = EXPLAINERS.get(method)
    images = [c for c, kind in model.task.media_columns().items() if kind == "image"]
    if not model.task.explains_words():  # e.g. an image-only model: its image's regions are all there is
        subject = image_subject(model, record, target)
        return {"method": "occlusion", "target": subject.target, "score": round(subject.score, 6), "words": [],
                "targets": model.task.explain_targets(subject.prediction),
                "images": {c: image_occlusion(model, subject, c, int(options.get("grid", 7))) for c in images}}
    subject = subject_for(model, record, target)
    result = explainer(model, subject, options)
    values = result.pop("attributions")
    words = [{"word": w, "start": a, "end": b, "attribution": None if v is None else round(float(v), 6)}
             for w, (a, b), v in zip(subject.words, subject.offsets, values)]
    if images and model.task.explains_by_prediction:  # the image's regions, alongside the words
        result["images"] = {c: image_occlusion(model, subject, c, int(options.get("grid", 7))) for c in images}
    return {"method": method, "target": subject.target, "score": round(subject.score, 6), "column": subject.column,
            "text": subject.text, "words": words, "targets": model.task.explain_targets(subject.prediction), **result}


def image_subject(model: Model, record: dict[str, Any], target: str | None) -> Subject:
    """A Subject without words, for a model that reads no text: the prediction, the target and its score."""
    (prediction,) = model.predict([record])
    if "error" in prediction:
        raise DataError(f"cannot predict for this input: {prediction['error']}")
    target = model.task.explain_resolve_target(prediction, target)
    return Subject(record, prediction, "", "", [], [], [], target, float(model.task.explain_score(prediction, target)))


def image_occlusion(model: Model, subject: Subject, column: str, grid: int = 7) -> dict[str, Any]:
    """Occlusion over an image: each cell of a ``grid`` x ``grid`` division painted with the image's mean colour in
    turn; a cell's attribution is how much the target's probability drops (positive: the region led to it).

    Returns ``{"rows", "cols", "width", "height", "attributions": [[one value per cell] per row]}``."""
    from PIL import ImageDraw

    from .images import read_image

    if grid < 1 or grid > 32:
        raise ConfigError(f"grid: {grid} cells a side; use 1 to 32")
    image = read_image(subject.record.get(column), Path.cwd(), f"input, column {column!r}")
    width, height = image.size
    mean = tuple(int(v) for v in np.asarray(image, dtype=np.float64).reshape(-1, 3).mean(0).round())
    xs = [round(i * width / grid) for i in range(grid + 1)]
    ys = [round(j * height / grid) for j in range(grid + 1)]
    records = []
    for j in range(grid):
        for i in range(grid):
            covered = image.copy()
            ImageDraw.Draw(covered).rectangle([xs[i], ys[j], max(xs[i], xs[i + 1] - 1), max(ys[j], ys[j + 1] - 1)],
                                              fill=mean)
            records.append({**subject.record, column: covered})
    drops = subject.score - model.scores(subject, records)
    return {"rows": grid, "cols": grid, "width": width, "height": height,
            "attributions": [[round(float(v), 6) for v in drops[j * grid:(j + 1) * grid]] for j in range(grid)]}


# ---- perturbation methods: through predict (any runtime), or on the model for tasks scored there ----------
def _occlusion(model: Model, subject: Subject, options: dict[str, Any]) -> dict[str, Any]:
    n = len(subject.words)
    if not model.task.explains_by_prediction:
        return _occlusion_on_model(model, subject)
    records = [subject.keeping([j != i for j in range(n)]) for i in range(n)]
    return {"attributions": subject.score - model.scores(subject, records)}


def _occlusion_on_model(model: Model, subject: Subject) -> dict[str, Any]:
    """Each word's tokens replaced by padding in turn (positions unchanged); its attribution is the target's drop."""
    inputs = model_inputs(model, subject, "occlusion")
    ids = inputs.batch["input_ids"]
    rows = []
    for a, b in subject.offsets:
        occluded = ids.clone()
        hit = [k for k, span in enumerate(inputs.spans) if span is not None and a < span[1] and span[0] < b]
        occluded[0, hit] = model.processor.pad_token_id or 0
        rows.append(occluded)
    batch = {k: (torch.cat(rows) if k == "input_ids" else v.expand(len(rows), *v.shape[1:]))
             for k, v in inputs.batch.items()}
    with torch.no_grad():
        scores = inputs.score(model.torch_model(**batch)).double().numpy()
    seen = [any(s is not None and a < s[1] and s[0] < b for s in inputs.spans) for a, b in subject.offsets]
    values = [subject.score - float(v) if ok else None for v, ok in zip(scores, seen)]
    return {"attributions": values, **_note(values)}


def _lime(model: Model, subject: Subject, options: dict[str, Any]) -> dict[str, Any]:
    from captum.attr import Lime
    from captum.attr._core.lime import get_exp_kernel_similarity_function

    if not model.task.explains_by_prediction:
        raise ConfigError(f"lime explains through predictions, which the {model.task.name} task does not score; "
                          "use occlusion, ig, gradxinput or attention")
    n = len(subject.words)

    def forward(mask: torch.Tensor) -> torch.Tensor:
        rows = [subject.keeping([bool(v) for v in row]) for row in mask.tolist()]
        return torch.as_tensor(model.scores(subject, rows), dtype=torch.float32)

    torch.manual_seed(int(options.get("seed", 0)))
    lime = Lime(forward, similarity_func=get_exp_kernel_similarity_function("cosine", kernel_width=0.75))
    samples = int(options.get("samples", max(50, min(300, 8 * n))))
    attributions = lime.attribute(torch.ones(1, n), baselines=torch.zeros(1, n), n_samples=samples,
                                  perturbations_per_eval=min(samples, 64))
    return {"attributions": attributions[0].tolist(), "samples": samples}


# ---- gradient methods: the PyTorch model through the task's explain_inputs ------------------------------
def model_inputs(model: Model, subject: Subject, method: str) -> Any:
    """The task's ``ExplainInputs`` for the subject; a runtime without a PyTorch model is named."""
    if model.torch_model is None:
        raise ConfigError(f"{method} needs gradients (or token outputs) from the PyTorch model of this {model.task.name} "
                          "artifact, and its runtime gives neither: explain the PyTorch artifact it was exported from"
                          + (", or use occlusion or lime" if model.task.explains_by_prediction else ""))
    return model.task.explain_inputs(model.processor, subject.record, subject.target, subject.prediction)


def _gradient_inputs(model: Model, subject: Subject, method: str) -> tuple[Any, Callable[..., torch.Tensor], Any]:
    inputs = model_inputs(model, subject, f"method {method!r}")
    embeddings = model.torch_model.get_input_embeddings()
    fixed = {k: v for k, v in inputs.batch.items() if k not in ("input_ids", "attention_mask", "token_type_ids")}

    def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        extra = {"token_type_ids": rest[0]} if rest else {}
        # inputs that are not attributed (an image's pixels) go along unchanged, one copy per row
        extra.update({k: v.expand(len(input_ids), *v.shape[1:]) for k, v in fixed.items()})
        return inputs.score(model.torch_model(input_ids=input_ids, attention_mask=attention_mask, **extra))

    return inputs, forward, embeddings


def _to_words(subject: Subject, token_scores: torch.Tensor, token_spans: list[tuple[int, int] | None]) -> list:
    """Sub-token scores summed into the words they overlap; a word no token covers (cut by max_length) is None."""
    sums: list[float | None] = [None] * len(subject.words)
    for score, span in zip(token_scores.tolist(), token_spans):
        if span is None:
            continue
        for i, (a, b) in enumerate(subject.offsets):
            if a < span[1] and span[0] < b:
                sums[i] = (sums[i] or 0.0) + score
    return sums


def _note(values: list) -> dict[str, Any]:
    missing = sum(v is None for v in values)
    return {"note": f"{missing} words past the model's max_length were not seen by it"} if missing else {}


def _args(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return tuple(batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch)


def _ig(model: Model, subject: Subject, options: dict[str, Any]) -> dict[str, Any]:
    from captum.attr import LayerIntegratedGradients

    inputs, forward, embeddings = _gradient_inputs(model, subject, "ig")
    batch, spans = inputs.batch, inputs.spans
    ids = batch["input_ids"]
    # the baseline: every word's tokens padded, special tokens ([CLS], [SEP], markers) kept
    baseline = ids.clone()
    baseline[0, [i for i, s in enumerate(spans) if s is not None]] = model.processor.pad_token_id or 0
    steps = int(options.get("steps", 32))
    ig = LayerIntegratedGradients(forward, embeddings)
    with torch.enable_grad():
        attributions, delta = ig.attribute(ids, baselines=baseline, additional_forward_args=_args(batch)[1:],
                                           n_steps=steps, internal_batch_size=steps, return_convergence_delta=True)
    values = _to_words(subject, attributions.sum(-1)[0].detach(), spans)
    return {"attributions": values, "convergence_delta": round(float(delta.abs().max()), 6), "steps": steps,
            **_note(values)}


def _gradxinput(model: Model, subject: Subject, options: dict[str, Any]) -> dict[str, Any]:
    from captum.attr import LayerGradientXActivation

    inputs, forward, embeddings = _gradient_inputs(model, subject, "gradxinput")
    with torch.enable_grad():
        attributions = LayerGradientXActivation(forward, embeddings).attribute(
            inputs.batch["input_ids"], additional_forward_args=_args(inputs.batch)[1:])
    values = _to_words(subject, attributions.sum(-1)[0].detach(), inputs.spans)
    return {"attributions": values, **_note(values)}


def _attention(model: Model, subject: Subject, options: dict[str, Any]) -> dict[str, Any]:
    inputs = model_inputs(model, subject, "method 'attention'")
    batch, spans = inputs.batch, inputs.spans
    net = model.torch_model
    switch = getattr(net, "set_attn_implementation", None)
    if switch is None:
        raise ConfigError(f"attention rollout needs a transformers model that returns its attention weights; "
                          f"{type(net).__name__} does not: use ig, gradxinput, occlusion or lime")
    before = net.config._attn_implementation
    switch("eager")  # fused attention kernels do not return the weights
    try:
        with torch.no_grad():
            attentions = net(**batch, output_attentions=True).attentions
    finally:
        switch(before)
    size = attentions[0].shape[-1]
    rollout = torch.eye(size)
    for layer in attentions:  # heads averaged, the residual path added, rows renormalised, layers chained
        mixed = 0.5 * layer[0].mean(0) + 0.5 * torch.eye(size)
        rollout = (mixed / mixed.sum(-1, keepdim=True)) @ rollout
    values = _to_words(subject, rollout[inputs.focus].mean(0), spans)  # read from the tokens the target sits on
    return {"attributions": values, **_note(values)}


for _name, _fn in (("occlusion", _occlusion), ("lime", _lime), ("ig", _ig), ("gradxinput", _gradxinput),
                   ("attention", _attention)):
    EXPLAINERS.add(_name, _fn)


# ---- faithfulness ---------------------------------------------------------------------------------------
def faithfulness(model: Model, records: list[dict[str, Any]], methods: list[str], k: float = 0.2,
                 random_draws: int = 3, seed: int = 0, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """ERASER comprehensiveness and sufficiency at ``k`` (a fraction of each input's words, at least one) for
    each method, and for ``random_draws`` random choices of as many words; plus seconds per explanation.

    Returns:
        ``{"k", "examples", "methods": {name: {"comprehensiveness", "sufficiency", "seconds_per_example"}},
        "random": {"comprehensiveness", "sufficiency"}}`` — means over the records.
    """
    import time

    if not 0 < k < 1:
        raise ConfigError(f"k: a fraction of the words between 0 and 1, got {k}")
    if not model.task.explains_by_prediction:
        raise ConfigError(f"faithfulness removes words and re-predicts, which the {model.task.name} task does not "
                          "score; it is measured for classification, relation and prompted classification")
    rng = random.Random(seed)
    sums: dict[str, dict[str, float]] = {m: {"comprehensiveness": 0.0, "sufficiency": 0.0, "seconds": 0.0}
                                         for m in [*methods, "random"]}
    for done, record in enumerate(records, 1):
        subject = subject_for(model, record, None)
        n = len(subject.words)
        top = max(1, math.ceil(k * n))
        choices: dict[str, list[list[int]]] = {"random": [rng.sample(range(n), top) for _ in range(random_draws)]}
        for method in methods:
            started = time.perf_counter()
            values = EXPLAINERS.get(method)(model, subject, {})["attributions"]
            sums[method]["seconds"] += time.perf_counter() - started
            ranked = sorted((i for i in range(n) if values[i] is not None), key=lambda i: -values[i])
            choices[method] = [ranked[:top]]
        for name, picks in choices.items():
            without = [subject.keeping([i not in set(p) for i in range(n)]) for p in picks]
            only = [subject.keeping([i in set(p) for i in range(n)]) for p in picks]
            scores = model.scores(subject, without + only)
            sums[name]["comprehensiveness"] += subject.score - float(scores[: len(picks)].mean())
            sums[name]["sufficiency"] += subject.score - float(scores[len(picks):].mean())
        if progress:
            progress(done)
    count = max(1, len(records))
    report = {m: {"comprehensiveness": round(v["comprehensiveness"] / count, 4),
                  "sufficiency": round(v["sufficiency"] / count, 4),
                  **({} if m == "random" else {"seconds_per_example": round(v["seconds"] / count, 4)})}
              for m, v in sums.items()}
    return {"k": k, "examples": len(records), "random": report.pop("random"), "methods": report}


def heatmap_html(explanation: dict[str, Any]) -> str:
    """One explanation as HTML: its text with each word's background red (towards the target) or blue
    (against), in proportion to its attribution; hover shows the value. Everything is escaped."""
    from html import escape

    values = [w["attribution"] for w in explanation["words"] if w["attribution"] is not None]
    scale = max((abs(v) for v in values), default=1.0) or 1.0
    text, at, parts = explanation["text"], 0, []
    for w in explanation["words"]:
        parts.append(escape(text[at: w["start"]]))
        v = w["attribution"]
        colour = "transparent" if v is None else (
            f"rgba(214,39,40,{abs(v) / scale:.2f})" if v > 0 else f"rgba(31,119,180,{abs(v) / scale:.2f})")
        tip = "not seen by the model" if v is None else f"{v:+.4f}"
        parts.append(f'<span class="w" style="background:{colour}" title="{tip}">{escape(w["word"])}</span>')
        at = w["end"]
    parts.append(escape(text[at:]))
    return f"<p class=text>{''.join(parts)}</p>"


HEATMAP_CSS = ".text{font-size:1.1rem;line-height:2}.w{padding:.1rem .15rem;border-radius:3px}"


def explanation_html(explanations: list[dict[str, Any]], title: str = "tunelab explanation") -> str:
    """A self-contained HTML page: each explained text as a heat map over its words (red: towards the target,
    blue: against), with the target, its probability and the method."""
    from html import escape

    blocks = []
    for e in explanations:
        extra = f" · convergence delta {e['convergence_delta']}" if "convergence_delta" in e else ""
        note = f"<p class=note>{escape(e['note'])}</p>" if e.get("note") else ""
        blocks.append(f"<section><h2>{escape(e['target'])} <small>p={e['score']:.3f} · {escape(e['method'])}{extra}"
                      f"</small></h2>{heatmap_html(e)}{note}</section>")
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{escape(title)}</title><style>"
            "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#1d2430}"
            + HEATMAP_CSS + "small{color:#5a6474;font-weight:normal}.note{color:#a4161a}</style></head><body><h1>"
            + escape(title) + "</h1><p>Red words raise the probability of the label, blue words lower it "
            "(hover for the value).</p>" + "".join(blocks) + "</body></html>")


__all__ = ["EXPLAINERS", "HEATMAP_CSS", "Model", "Subject", "explain_record", "explanation_html", "faithfulness",
           "heatmap_html", "image_occlusion", "register_explainer", "subject_for"]
