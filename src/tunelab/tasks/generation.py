"""Generation tasks on causal LMs: summarization, translation and multi-turn dialogue.

Every record becomes a conversation rendered with the model's own chat template; the loss covers the
assistant's tokens only (the prompt is context, not target). Summarization and translation fill the
user turn from ``task.instruction``; dialogue records carry their turns as ``[{role, content}, ...]``.
Inputs too long for ``data.max_length`` are shortened at the source text (summarization/translation)
or by dropping the oldest turns (dialogue), and the count is reported.
"""

from __future__ import annotations

import sys
from functools import partial
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from .. import metrics as M
from ..config import Config, DataConfig, GenerateConfig, TaskOptions
from ..data import Records
from ..errors import DataError
from ..inference import batched
from ..prompts import check_template, ensure_chat_template, fill
from ..registry import TASKS
from .base import Task

ROLES = ("system", "user", "assistant")


class GenerationOptions(TaskOptions):
    """``task:`` for the generation tasks."""

    instruction: str | None = Field(None, description="the user turn, with a {text} slot (translation also "
                                    "{source_lang} {target_lang}); a default per task")
    system_prompt: str | None = Field(None, description="a system turn (default: the chat template's own)")
    packing: bool = Field(False, description="pack several short examples into one training sequence "
                          "(attention stays within each example)")
    eval_generate: int = Field(32, ge=0, description="validation records generated at each evaluation during "
                               "training for ROUGE/BLEU (0: loss only); the final evaluation generates all")

    @model_validator(mode="after")
    def _instruction_slots(self) -> GenerationOptions:
        if self.instruction is not None:
            check_template(self.instruction, TASKS.get(self.name).prompt_slots, "task.instruction")
        return self


class TranslationOptions(GenerationOptions):
    """``task:`` for translation."""

    source_lang: str = Field("English", description="source language name used in the instruction")
    target_lang: str = Field("French", description="target language name used in the instruction")


class GenerationColumns(DataConfig):
    """``data:`` for the generation tasks."""

    target_column: str = Field("target", description="summarization/translation: the reference output text")
    reference_columns: list[str] | None = Field(None, description="several reference columns for evaluation "
                                                "(multi-reference ROUGE/BLEU), e.g. [summary1, summary2]")
    messages_column: str = Field("messages", description="dialogue: a list of {role, content} turns")


class GeneratedText(BaseModel):
    """One generated output."""

    text: str


class GenerationTask(Task):
    """Supervised fine-tuning of a causal LM on chat-formatted records (see the module docstring); the
    registered tasks are its subclasses ``summarization``, ``translation`` and ``dialogue``."""

    Options = GenerationOptions
    Columns = GenerationColumns
    Prediction = GeneratedText
    strategies = ("finetune", "zero_shot")
    peft_task_type = "CAUSAL_LM"
    primary_metric = ("loss", False)
    default_template: str | None = None  # the user turn around {text} (dialogue records carry their own turns)
    streams = True
    export_formats = ("onnx-genai",)  # a decoding loop around the model: the generation engine's format
    export_metric = ("rougeL", True)  # the loss needs the PyTorch model; the engine is judged on its outputs

    def __init__(self, state: dict[str, Any]):
        super().__init__(state)
        self.name: str = state["kind"]
        self.generate_config = GenerateConfig(**state.get("generate", {}))

    @classmethod
    def from_training_data(cls, cfg: Config, train: Records | None) -> GenerationTask:
        return cls.from_prompt_config(cfg, train, "finetune")

    @classmethod
    def from_prompt_config(cls, cfg: Config, train: Records | None, strategy: str) -> GenerationTask:
        t, d = cfg.task, cfg.data
        return cls({
            "kind": t.name,
            "instruction": t.instruction or cls.default_template,
            "system_prompt": t.system_prompt,
            "source_lang": getattr(t, "source_lang", None),
            "target_lang": getattr(t, "target_lang", None),
            "text_column": d.text_column,
            "target_column": d.target_column,
            "reference_columns": d.reference_columns,
            "messages_column": d.messages_column,
            "max_length": d.max_length,
            "packing": t.packing,
            "eval_generate": t.eval_generate,
            "generate": cfg.generate.model_dump(mode="json"),
        })

    def input_schema(self) -> type[BaseModel]:
        if self.name != "dialogue":
            return super().input_schema()
        return create_model("DialogueInput", __config__=ConfigDict(extra="allow"),
                            **{self.state["messages_column"]: (list[dict[str, str]], ...)})

    def input_row(self, item: Any) -> dict[str, Any]:
        if isinstance(item, str) and self.name == "dialogue":  # a plain string is the user's first turn
            return {self.state["messages_column"]: [{"role": "user", "content": item}]}
        return super().input_row(item)

    def load_processor(self, path: Any) -> Any:
        tokenizer = super().load_processor(path)
        ensure_chat_template(tokenizer)
        return tokenizer

    def prepare_processor(self, tokenizer: Any) -> None:
        ensure_chat_template(tokenizer)

    # ---- records -> conversations -------------------------------------------------------------------
    def conversation(self, row: dict[str, Any], records: Records, i: int, *, with_answer: bool) -> list[dict[str, str]]:
        """The chat a record is (system, user, and with ``with_answer`` the reply to learn)."""
        s = self.state
        if self.name == "dialogue":
            return self._dialogue(row, records, i, with_answer=with_answer)
        text = _nonempty(row, s["text_column"], records, i, "input text", "data.text_column")
        user = fill(s["instruction"], text=text, source_lang=s["source_lang"], target_lang=s["target_lang"])
        messages = [{"role": "system", "content": s["system_prompt"]}] if s.get("system_prompt") else []
        messages.append({"role": "user", "content": user})
        if with_answer:
            target = s["target_column"]
            if target not in row and s.get("reference_columns"):
                target = s["reference_columns"][0]  # e.g. a test file with summary1..3 and no summary
            messages.append({"role": "assistant", "content": _nonempty(row, target, records, i,
                                                                      "reference output", "data.target_column")})
        return messages

    def _dialogue(self, row: dict[str, Any], records: Records, i: int, *, with_answer: bool) -> list[dict[str, str]]:
        col = self.state["messages_column"]
        turns = row.get(col)
        if not isinstance(turns, list) or not turns:
            raise DataError(f"{records.where(i)}, field {col!r}: expected a non-empty list of {{role, content}} turns "
                            f"(data.messages_column), got {type(turns).__name__}")
        messages = []
        for j, turn in enumerate(turns):
            if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
                raise DataError(f"{records.where(i)}, {col}[{j}]: expected {{'role': ..., 'content': ...}}, got {turn!r}")
            role, content = str(turn["role"]).strip().lower(), turn["content"]
            if role not in ROLES:
                raise DataError(f"{records.where(i)}, {col}[{j}]: unknown role {turn['role']!r}; use one of {', '.join(ROLES)}")
            if not isinstance(content, str) or not content.strip():
                raise DataError(f"{records.where(i)}, {col}[{j}] ({role}): empty content")
            messages.append({"role": role, "content": content})
        body = messages[1:] if messages[0]["role"] == "system" else messages
        for j, m in enumerate(body):
            expected = "user" if j % 2 == 0 else "assistant"
            if m["role"] != expected:
                offset = len(messages) - len(body)
                raise DataError(f"{records.where(i)}, {col}[{j + offset}]: roles out of order: expected {expected!r} "
                                f"after {body[j - 1]['role'] if j else 'the start'}, got {m['role']!r} "
                                "(a system turn may only come first; then user and assistant alternate)")
        if not body:
            raise DataError(f"{records.where(i)}, {col}: only a system turn; need at least one user turn")
        last = body[-1]["role"]
        if with_answer and last != "assistant":
            raise DataError(f"{records.where(i)}, {col}: the last turn must be the assistant's reply to learn from "
                            f"(got {last!r})")
        if not with_answer and last == "assistant":
            messages = messages[:-1]  # predict the reply the record already has (e.g. for evaluation)
        return messages

    def references(self, row: dict[str, Any], records: Records, i: int) -> list[str]:
        """The reference outputs of a record (several where ``data.reference_columns`` has them)."""
        s = self.state
        if self.name == "dialogue":
            turns = row.get(s["messages_column"]) or []
            if not turns or not isinstance(turns[-1], dict) or turns[-1].get("role") != "assistant":
                raise DataError(f"{records.where(i)}: evaluating a dialogue needs its last turn to be the assistant's reply")
            return [str(turns[-1]["content"])]
        # Several references where the row has them (e.g. a test file), else the training target.
        columns = [c for c in s.get("reference_columns") or [] if c in row] or [s["target_column"]]
        if columns[0] not in row:
            raise DataError(f"{records.where(i)}: no reference: column {columns[0]!r} is missing "
                            f"(data.target_column; data.reference_columns for several)")
        return [_nonempty(row, col, records, i, "reference", "data.reference_columns") for col in columns]

    # ---- conversations -> token ids ---------------------------------------------------------------------
    def _pieces(self, tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[tuple[str, bool]]:
        """Split the rendered conversation into (text, is_assistant_reply) pieces."""
        render = partial(tokenizer.apply_chat_template, tokenize=False)
        full = render(messages, add_generation_prompt=add_generation_prompt)
        pieces: list[tuple[str, bool]] = []
        at = 0
        for j, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            before = render(messages[:j], add_generation_prompt=True)
            after = render(messages[:j + 1], add_generation_prompt=False)
            if not (full.startswith(before) and full.startswith(after) and len(after) > len(before) >= at):
                raise DataError("this model's chat template does not render conversations incrementally; "
                                "tunelab cannot find the assistant tokens to train on")
            pieces.append((full[at:len(before)], False))
            pieces.append((full[len(before):len(after)], True))
            at = len(after)
        if at < len(full):
            pieces.append((full[at:], False))
        return pieces

    def _ids(self, tokenizer: Any, messages: list[dict[str, str]], with_answer: bool) -> tuple[list[int], list[int]]:
        ids: list[int] = []
        labels: list[int] = []
        for text, is_reply in self._pieces(tokenizer, messages, add_generation_prompt=not with_answer):
            piece = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
            ids += piece
            labels += piece if is_reply else [-100] * len(piece)
        return ids, labels

    def _fit(self, tokenizer: Any, messages: list[dict[str, str]], with_answer: bool) -> tuple[list[int], list[int], bool]:
        """Token ids within data.max_length: shorten the source text, or drop the oldest dialogue turns."""
        limit = self.state["max_length"]
        ids, labels = self._ids(tokenizer, messages, with_answer)
        if len(ids) <= limit:
            return ids, labels, False
        if self.name == "dialogue":
            msgs = list(messages)
            start = 1 if msgs[0]["role"] == "system" else 0
            while len(ids) > limit and len(msgs) - start > 2:
                del msgs[start:start + 2]  # the oldest user/assistant exchange
                ids, labels = self._ids(tokenizer, msgs, with_answer)
            messages = msgs
        if len(ids) > limit:
            # Shorten the user turn's content by the overflow (plus a margin for re-tokenization).
            user_at = max(j for j, m in enumerate(messages) if m["role"] == "user")
            content_ids = tokenizer(messages[user_at]["content"], add_special_tokens=False)["input_ids"]
            for margin in (8, 32, 128):
                keep = len(content_ids) - (len(ids) - limit) - margin
                if keep < 8:
                    break
                shortened = [dict(m) for m in messages]
                shortened[user_at]["content"] = tokenizer.decode(content_ids[:keep])
                ids, labels = self._ids(tokenizer, shortened, with_answer)
                if len(ids) <= limit:
                    break
        if len(ids) > limit:
            raise DataError(f"a record does not fit data.max_length={limit} tokens even with its input shortened "
                            f"(the reply alone is too long): raise data.max_length")
        return ids, labels, True

    def encode(self, records: Records, tokenizer: Any, *, with_labels: bool) -> list[dict[str, Any]]:
        ensure_chat_template(tokenizer)
        features = []
        shortened = 0
        for i, row in enumerate(records.rows):
            prompt_messages = self.conversation(row, records, i, with_answer=False)
            try:
                prompt_ids, _, cut = self._fit(tokenizer, prompt_messages, with_answer=False)
            except DataError as err:
                raise DataError(f"{records.where(i)}: {err}") from None
            feat: dict[str, Any] = {"prompt_ids": prompt_ids, "input_ids": prompt_ids}
            if with_labels:
                full = self.conversation(row, records, i, with_answer=True)
                feat["references"] = self.references(row, records, i)
                try:
                    ids, labels, cut_full = self._fit(tokenizer, full, with_answer=True)
                except DataError as err:
                    raise DataError(f"{records.where(i)}: {err}") from None
                cut = cut or cut_full
                feat.update(input_ids=ids, labels=labels)
            shortened += int(cut)
            features.append(feat)
        if shortened:
            print(f"note: {records.source}: {shortened} of {len(records)} records were longer than data.max_length="
                  f"{self.state['max_length']} tokens; their input was shortened (oldest turns / end of the text)",
                  file=sys.stderr)
        return features

    def prepare_training_features(self, features: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """With task.packing, greedily pack examples into sequences of up to data.max_length tokens;
        position ids restart per example, which makes transformers keep attention inside each one."""
        if not self.state.get("packing"):
            return features
        limit = self.state["max_length"]
        packed: list[dict[str, Any]] = []
        current: dict[str, Any] | None = None
        for feat in sorted(features, key=lambda f: len(f["input_ids"]), reverse=True):
            n = len(feat["input_ids"])
            if current is None or len(current["input_ids"]) + n > limit:
                current = {"input_ids": [], "labels": [], "position_ids": [], "examples": 0}
                packed.append(current)
            current["input_ids"] += feat["input_ids"]
            current["labels"] += feat["labels"]
            current["position_ids"] += list(range(n))
            current["examples"] += 1
        return packed

    def collate(self, processor: Any) -> Any:
        return partial(_collate_causal, pad_token_id=processor.pad_token_id or 0)

    def loss_units(self, feature: dict[str, Any]) -> int:
        return sum(1 for x in feature["labels"] if x != -100)

    # ---- model ----------------------------------------------------------------------------------------
    def build_model(self, model_path: Any, dropout: float | None) -> tuple[torch.nn.Module, list[str]]:
        from transformers import AutoModelForCausalLM

        from ..models import load_pretrained, quiet_loading
        from .common import config_with_dropout

        config = config_with_dropout(model_path, dropout)
        with quiet_loading():
            model = load_pretrained(AutoModelForCausalLM, model_path, config=config)
        # Training forwards need no KV cache, and with one transformers ignores packed position ids
        # (attention would leak across packed examples). generate() still caches via generation_config.
        model.config.use_cache = False
        return model, []  # no new head: the LM head is pretrained

    def loss_sum(self, outputs: Any, labels: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        """Summed next-token cross-entropy over the reply tokens."""
        kept = outputs.logits.shape[1]  # the last `kept` positions (logits_to_keep), or all of them
        logits = outputs.logits[:, :-1, :]
        targets = labels[:, labels.shape[1] - kept + 1:]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                               ignore_index=-100, reduction="sum")

    # ---- evaluation and prediction ------------------------------------------------------------------------
    def evaluate_features(self, model: torch.nn.Module, processor: Any, features: list[dict[str, Any]],
                          batch_size: int, device: Any = "cpu", *, full: bool = True) -> dict[str, Any]:
        """Reply-token loss (and perplexity) on all features; ROUGE/BLEU/chrF on generated outputs for
        all features (``full``) or the first ``task.eval_generate`` during training."""
        from ..causal_lm import GenerateOnly, generate_ids

        collate = self.collate(processor)

        def losses(chunk: list[dict[str, Any]]) -> list[tuple[float, int]]:
            batch = {k: v.to(device) for k, v in collate(chunk).items()}
            labels = batch.pop("labels")
            total = float(self.loss_sum(model(**batch), labels, None))
            # the batch's summed loss and units go with its first feature (the others add nothing)
            return [(total, sum(self.loss_units(f) for f in chunk))] + [(0.0, 0)] * (len(chunk) - 1)

        metrics: dict[str, Any] = {}
        if not isinstance(model, GenerateOnly):  # an exported engine generates but computes no loss
            parts = batched(model, features, losses, batch_size=max(1, min(8, batch_size)),
                            length=self.feature_length, longest_first=False)
            loss = sum(t for t, _ in parts) / max(sum(u for _, u in parts), 1)
            metrics.update(loss=loss, perplexity=float(np.exp(min(loss, 50.0))))
        n = len(features) if full else min(len(features), self.state.get("eval_generate", 0))
        if n:
            outputs = generate_ids(model, processor, [f["prompt_ids"] for f in features[:n]], self.generate_config,
                                   progress=full)
            metrics.update(M.generation_metrics(outputs, [f["references"] for f in features[:n]]))
            metrics["examples"] = [{"prediction": p, "reference": f["references"][0]}
                                   for p, f in zip(outputs[:5], features[:5])]
        return metrics

    def predict_records(self, model: torch.nn.Module, processor: Any, records: Records,
                        batch_size: int = 16) -> list[dict[str, Any]]:
        """The generated text for each record (decoding as ``generate`` configures it)."""
        from ..causal_lm import generate_ids

        if not len(records):
            return []
        features = self.encode(records, processor, with_labels=False)
        return [{"text": t} for t in generate_ids(model, processor, [f["prompt_ids"] for f in features],
                                                   self.generate_config)]

    def stream(self, model: torch.nn.Module, processor: Any, records: Records) -> Iterator[str]:
        """The generated text for one record, piece by piece as it is produced."""
        from ..causal_lm import stream_ids

        if len(records) != 1:
            raise DataError(f"stream takes one input at a time, got {len(records)}")
        feature = self.encode(records, processor, with_labels=False)[0]
        return stream_ids(model, processor, feature["prompt_ids"], self.generate_config)

    # ---- error analysis ---------------------------------------------------------------------------
    def analysis_rows(self, records: Records, predictions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Per record: the output, its references and ROUGE-1/2/L (loss: 1 - ROUGE-L/100); input and reference
        lengths in words."""
        references = [self.references(row, records, i) for i, row in enumerate(records.rows)]
        outputs = [p["text"] for p in predictions]
        rows = []
        for row, refs, out, scores in zip(records.rows, references, outputs, M.rouge_each(outputs, references)):
            text = self._input_text(row)
            rows.append({"text": text, "gold": refs[0], "pred": out, "correct": None, "loss": 1.0 - scores["rougeL"] / 100,
                         **scores, "input_words": len(text.split()), "reference_words": len(refs[0].split())})
        return rows

    def _input_text(self, row: dict[str, Any]) -> str:
        if self.name == "dialogue":
            turns = row.get(self.state["messages_column"]) or []
            return "\n".join(str(t.get("content", "")) for t in turns[:-1] if isinstance(t, dict))
        return str(row.get(self.state["text_column"], ""))

    def analysis_metrics(self, rows: list[dict[str, Any]]) -> dict[str, float]:
        """Mean ROUGE-1/2/L over the rows."""
        return {k: float(np.mean([r[k] for r in rows])) if rows else 0.0 for k in M.ROUGE_KEYS}

    def analysis_sections(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """ROUGE by input length and by reference length (quartile buckets), and the worst outputs."""
        sections = []
        for title, key in (("ROUGE by input length (words)", "input_words"),
                           ("ROUGE by reference length (words)", "reference_words")):
            groups: dict[str, list[dict[str, Any]]] = {}
            for row, bucket in zip(rows, M.length_buckets([r[key] for r in rows])):
                groups.setdefault(bucket, []).append(row)
            table = [{"length": name, "count": len(group), **self.analysis_metrics(group)}
                     for name, group in sorted(groups.items(), key=lambda kv: int(kv[0].split("-")[0]))]
            sections.append({"title": title, "table": table,
                             "plot": {"kind": "bars", "values": {t["length"]: t["rougeL"] for t in table},
                                      "xlabel": "ROUGE-L"}})
        worst = sorted(rows, key=lambda r: -r["loss"])[:10]
        sections.append({"title": "Worst outputs (lowest ROUGE-L)", "table": [
            {"input": r["text"][:300], "output": r["pred"], "reference": r["gold"], "rougeL": r["rougeL"]} for r in worst]})
        return sections


class SummarizationTask(GenerationTask):
    """Summarization: ``text_column`` -> ``target_column`` through ``task.instruction``."""

    prompt_slots = frozenset({"text"})
    default_template = "Summarize the following text in one or two sentences.\n\n{text}"


class TranslationTask(GenerationTask):
    """Translation: ``text_column`` -> ``target_column``; the instruction names the two languages."""

    Options = TranslationOptions
    prompt_slots = frozenset({"text", "source_lang", "target_lang"})
    default_template = "Translate the following text from {source_lang} to {target_lang}.\n\n{text}"


class DialogueTask(GenerationTask):
    """Multi-turn dialogue: ``messages_column`` holds ``[{role, content}, ...]``; the reply is learned."""

    prompt_slots = frozenset({"text"})

    def input_columns(self) -> list[str]:
        return [self.state["messages_column"]]


for _task in (SummarizationTask, TranslationTask, DialogueTask):
    _task.Prompted = _task  # prompting a causal LM is the same task without training


def _collate_causal(features: list[dict[str, Any]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Left-padded batch. Replies then sit at the right end of every row, so the vocabulary-sized output
    layer only runs on the last positions (``logits_to_keep``): less compute, and memory for the
    logits that grows with the reply, not the whole sequence."""
    longest = max(len(f["input_ids"]) for f in features)
    n = len(features)
    if "position_ids" in features[0]:
        return _collate_packed(features, pad_token_id, longest)
    ids = torch.full((n, longest), pad_token_id, dtype=torch.long)
    labels = torch.full((n, longest), -100, dtype=torch.long)
    mask = torch.zeros((n, longest), dtype=torch.long)
    keep = 1
    for row, f in enumerate(features):
        k = len(f["input_ids"])
        ids[row, longest - k:] = torch.as_tensor(f["input_ids"])
        mask[row, longest - k:] = 1
        if "labels" in f:
            labels[row, longest - k:] = torch.as_tensor(f["labels"])
            first = next((j for j, y in enumerate(f["labels"]) if y != -100), k)
            keep = max(keep, k - first + 1)  # the position before the first reply token predicts it
    batch = {"input_ids": ids, "attention_mask": mask,
             "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}  # positions count real tokens only
    if "labels" in features[0]:
        batch["labels"] = labels
        batch["logits_to_keep"] = torch.arange(longest - keep, longest)
    return batch


def _collate_packed(features: list[dict[str, Any]], pad_token_id: int, longest: int) -> dict[str, torch.Tensor]:
    n = len(features)
    ids = torch.full((n, longest), pad_token_id, dtype=torch.long)
    labels = torch.full((n, longest), -100, dtype=torch.long)
    positions = torch.zeros((n, longest), dtype=torch.long)
    for row, f in enumerate(features):
        k = len(f["input_ids"])
        ids[row, :k] = torch.as_tensor(f["input_ids"])
        labels[row, :k] = torch.as_tensor(f["labels"])
        positions[row, :k] = torch.as_tensor(f["position_ids"])
        positions[row, k:] = torch.arange(longest - k)  # padding reads as one more (ignored) sequence
    # No attention mask on purpose: from restarting position ids transformers builds a block-diagonal
    # causal mask, so packed examples never attend to each other.
    return {"input_ids": ids, "position_ids": positions, "labels": labels}


def _nonempty(row: dict[str, Any], column: str, records: Records, i: int, what: str, key: str) -> str:
    if column not in row:
        raise DataError(f"{records.where(i)}: column {column!r} ({what}) is missing; set {key}")
    value = row[column]
    if value is None or (isinstance(value, float) and np.isnan(value)) or not str(value).strip():
        raise DataError(f"{records.where(i)}, column {column!r}: empty {what}")
    return str(value)
