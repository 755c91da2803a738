"""Causal-LM helpers shared by generation tasks and prompting: load, generate (batched or streamed),
and score continuations.

Generation pads on the left (a decoder continues from the last position), decodes only the new
tokens, and cuts the output at the first stop string. Prompts longer than the context window are
truncated from the left and reported, never silently.

Example:
    >>> from tunelab.causal_lm import load_causal_lm, generate_ids                    # doctest: +SKIP
    >>> from tunelab.config import GenerateConfig                                       # doctest: +SKIP
    >>> model, tok = load_causal_lm("smollm2")                                          # doctest: +SKIP
    >>> generate_ids(model, tok, [tok("Hello")["input_ids"]], GenerateConfig())         # doctest: +SKIP
"""

from __future__ import annotations

import sys
import threading
from typing import Any, Iterator

import numpy as np
import torch

from .config import GenerateConfig
from .errors import ConfigError
from .inference import batched
from .models import load_pretrained, quiet_loading, resolve_model
from .prompts import ensure_chat_template


class GenerateOnly(torch.nn.Module):
    """A causal LM that generates through ``generate`` but has no forward pass for losses or scores (an
    exported engine such as ``tunelab.genai_model.GenAIModel``); evaluation then reports generation metrics only."""


def load_causal_lm(name_or_path: Any, *, allow_network: bool = False) -> tuple[torch.nn.Module, Any]:
    """A causal LM and its tokenizer (pad token set, chat template ensured), in eval mode."""
    from transformers import AutoModelForCausalLM

    path = resolve_model(str(name_or_path), allow_network=allow_network).path
    tokenizer = load_tokenizer(path)
    with quiet_loading():
        model = load_pretrained(AutoModelForCausalLM, path)
    return model.eval(), tokenizer


def load_tokenizer(path: Any) -> Any:
    """A causal LM's tokenizer with a pad token (its EOS) and a chat template (a plain fallback)."""
    from transformers import AutoTokenizer

    tokenizer = load_pretrained(AutoTokenizer, path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    ensure_chat_template(tokenizer)
    return tokenizer


def context_window(model: torch.nn.Module, tokenizer: Any) -> int:
    """How many tokens the model reads: its position limit, else the tokenizer's ``model_max_length``."""
    config = getattr(model, "config", None)
    window = getattr(config, "max_position_embeddings", None) or getattr(tokenizer, "model_max_length", 2048)
    return int(min(window, 1_000_000))


def fit_prompt(ids: list[int], limit: int, where: str, report: list[str] | None) -> list[int]:
    """Keep the last ``limit`` tokens of a too-long prompt (the instruction's end and the assistant
    opening matter most) and record that it happened."""
    if len(ids) <= limit:
        return ids
    message = f"{where}: prompt of {len(ids)} tokens truncated to the last {limit} (context window)"
    if report is not None:
        report.append(message)
    else:
        print(f"warning: {message}", file=sys.stderr)
    return ids[-limit:]


def generation_kwargs(cfg: GenerateConfig, tokenizer: Any) -> dict[str, Any]:
    """``model.generate`` arguments for a ``GenerateConfig`` (greedy, beam or sampling)."""
    kwargs: dict[str, Any] = {"max_new_tokens": cfg.max_new_tokens, "pad_token_id": tokenizer.pad_token_id,
                              "repetition_penalty": cfg.repetition_penalty}
    eos = {tokenizer.eos_token_id}
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else None
    if im_end is not None:
        eos.add(im_end)  # ChatML models end their turn with <|im_end|>
    kwargs["eos_token_id"] = sorted(e for e in eos if e is not None)
    if cfg.no_repeat_ngram_size:
        kwargs["no_repeat_ngram_size"] = cfg.no_repeat_ngram_size
    if cfg.strategy == "greedy":
        kwargs.update(do_sample=False, num_beams=1)
    elif cfg.strategy == "beam":
        kwargs.update(do_sample=False, num_beams=cfg.num_beams, early_stopping=True)
    else:
        kwargs.update(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, num_beams=1)
    if cfg.stop:
        kwargs.update(stop_strings=list(cfg.stop), tokenizer=tokenizer)
    # Unset sampling knobs in the model's own generation config would otherwise warn on every call.
    if cfg.strategy != "sample":
        kwargs.update(temperature=None, top_p=None, top_k=None)
    return kwargs


def cut_at_stop(text: str, stops: list[str]) -> str:
    """``text`` up to the first stop string (the whole text when none occurs)."""
    cut = len(text)
    for stop in stops:
        at = text.find(stop)
        if at != -1:
            cut = min(cut, at)
    return text[:cut]


def _left_pad(batch_ids: list[list[int]], pad_id: int, positions: bool = False) -> dict[str, torch.Tensor]:
    """Left-padded ids and mask; with ``positions`` also position ids that count real tokens only (as
    generate() computes them; a plain forward would otherwise count the padding)."""
    longest = max(len(ids) for ids in batch_ids)
    input_ids = torch.full((len(batch_ids), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch_ids), longest), dtype=torch.long)
    for row, ids in enumerate(batch_ids):
        input_ids[row, longest - len(ids):] = torch.as_tensor(ids, dtype=torch.long)
        mask[row, longest - len(ids):] = 1
    batch = {"input_ids": input_ids, "attention_mask": mask}
    if positions:
        batch["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    return batch


def generate_ids(model: torch.nn.Module, tokenizer: Any, prompts: list[list[int]], cfg: GenerateConfig,
                 progress: bool = True) -> list[str]:
    """Generate for tokenized prompts: batches of similar length, outputs in input order."""
    if cfg.strategy == "sample" and cfg.seed is not None:
        torch.manual_seed(cfg.seed)
    kwargs = generation_kwargs(cfg, tokenizer)

    def run(chunk: list[list[int]]) -> list[str]:
        batch = _left_pad(chunk, tokenizer.pad_token_id)
        new = model.generate(**batch, **kwargs)[:, batch["input_ids"].shape[1]:]
        return [cut_at_stop(tokenizer.decode(row, skip_special_tokens=True), cfg.stop).strip() for row in new]

    return batched(model, prompts, run, batch_size=cfg.batch_size, length=len, desc="generate" if progress else None)


def stream_ids(model: torch.nn.Module, tokenizer: Any, prompt: list[int], cfg: GenerateConfig) -> Iterator[str]:
    """Yield the generated text piece by piece as the model produces it (beam search cannot stream)."""
    from transformers import TextIteratorStreamer

    if cfg.strategy == "beam":
        raise ConfigError("generate.strategy beam picks its output only at the end, so it cannot stream; use greedy or sample")
    if cfg.strategy == "sample" and cfg.seed is not None:
        torch.manual_seed(cfg.seed)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    kwargs = {**generation_kwargs(cfg, tokenizer), **_left_pad([prompt], tokenizer.pad_token_id), "streamer": streamer}
    failure: list[BaseException] = []

    def work() -> None:
        try:
            with torch.inference_mode():
                model.generate(**kwargs)
        except BaseException as err:  # surfaced in the caller's thread below
            failure.append(err)
            streamer.end()

    model.eval()
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    emitted = ""
    for piece in streamer:
        candidate = emitted + piece
        cut = cut_at_stop(candidate, cfg.stop)
        if len(cut) < len(candidate):  # a stop string appeared: emit what precedes it and finish
            if len(cut) > len(emitted):
                yield cut[len(emitted):]
            break
        emitted = candidate
        if piece:
            yield piece
    thread.join()
    if failure:
        raise failure[0]


def continuation_logprobs(model: torch.nn.Module, tokenizer: Any, prompts: list[list[int]],
                          continuations: list[list[int]], batch_size: int = 16) -> np.ndarray:
    """Sum of log P(continuation tokens | prompt) for each (prompt, continuation) pair.

    Left padding puts every continuation at the end of its row, so only the last few positions need
    the (vocabulary-sized) output layer: ``logits_to_keep``."""
    def run(chunk: list[tuple[list[int], list[int]]]) -> list[float]:
        batch = _left_pad([prompt + cont for prompt, cont in chunk], tokenizer.pad_token_id, positions=True)
        keep = max(len(cont) for _, cont in chunk) + 1
        logits = model(**batch, logits_to_keep=keep).logits.float()
        logp = torch.log_softmax(logits, dim=-1)  # [rows, keep, vocab]; the last position predicts nothing
        # logits at t predict token t+1: a continuation's c tokens are predicted by the c positions before
        # the last one.
        return [float(logp[row, keep - 1 - len(cont):keep - 1, :].gather(-1, torch.as_tensor(cont).unsqueeze(-1)).sum())
                for row, (_, cont) in enumerate(chunk)]

    pairs = list(zip(prompts, continuations))
    return np.asarray(batched(model, pairs, run, batch_size=batch_size, length=lambda p: len(p[0]) + len(p[1]),
                              desc="score"), dtype=np.float64).reshape(len(pairs))


def next_token_logprobs(model: torch.nn.Module, tokenizer: Any, prompts: list[list[int]], token_ids: list[int],
                        batch_size: int = 16) -> np.ndarray:
    """log P(token | prompt) for each prompt and each of ``token_ids``: one forward pass per prompt."""
    wanted = torch.as_tensor(token_ids)

    def run(chunk: list[list[int]]) -> list[np.ndarray]:
        batch = _left_pad(chunk, tokenizer.pad_token_id, positions=True)
        logits = model(**batch, logits_to_keep=1).logits[:, -1, :].float()
        return list(torch.log_softmax(logits, dim=-1)[:, wanted].numpy().astype(np.float64))

    rows = batched(model, prompts, run, batch_size=batch_size, length=len, desc="score")
    return np.asarray(rows, dtype=np.float64).reshape(len(prompts), len(token_ids))
