"""A causal LM exported for ONNX Runtime GenAI, run behind the transformers ``generate`` contract.

``GenAIModel.generate(input_ids, attention_mask, max_new_tokens=..., ...)`` takes the left-padded batch and the
keyword arguments ``tunelab.causal_lm`` already builds for transformers, and returns the same tensor
(the prompt followed by the new tokens), so a task's prompting, stop strings, streaming and decoding run
unchanged: one code path for the PyTorch model and the quantized engine.

ONNX Runtime GenAI batches prompts by right padding with its configured pad token and derives each row's
attention mask from it, so a prompt that contains that token is generated on its own (the export picks a pad
token prompts do not normally contain). It generates; it does not compute training losses.

Example:
    >>> model = GenAIModel("artifact/model")                                              # doctest: +SKIP
    >>> model.generate(ids, mask, max_new_tokens=32, eos_token_id=[2], pad_token_id=2)    # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from .causal_lm import GenerateOnly
from .errors import ArtifactError, ConfigError

INSTALL = "pip install 'tunelab[onnx]'"
# transformers ``generate`` arguments ONNX Runtime GenAI takes under the same name, and those handled here
SEARCH_OPTIONS = {"do_sample", "num_beams", "temperature", "top_p", "top_k", "repetition_penalty", "no_repeat_ngram_size"}
HANDLED = {"min_new_tokens", "early_stopping"}


def onnxruntime_genai() -> Any:
    """The ``onnxruntime_genai`` module, or a clear error saying which extra installs it."""
    try:
        import onnxruntime_genai as og
    except ImportError:
        raise ConfigError(f"onnx-genai models need onnxruntime-genai: {INSTALL}") from None
    return og


class GenAIModel(GenerateOnly):
    """An ONNX Runtime GenAI model directory (``genai_config.json`` + ``model.onnx``) that generates like a
    transformers causal LM.

    Args:
        path: the directory the ONNX Runtime GenAI model builder wrote.
        threads: intra-op threads (default: torch's thread count).
    """

    def __init__(self, path: str | Path, threads: int | None = None):
        super().__init__()
        og = onnxruntime_genai()
        path = Path(path)
        try:
            settings = json.loads((path / "genai_config.json").read_text())
            self.pad_id = int(settings["model"]["pad_token_id"])
            context = int(settings["model"]["context_length"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ArtifactError(f"{path}/genai_config.json is missing or not an ONNX Runtime GenAI config: {err}") from None
        try:
            config = og.Config(str(path))
            options = {"intra_op_num_threads": int(threads or torch.get_num_threads())}
            config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
            self.engine = og.Model(config)
        except Exception as err:  # onnxruntime-genai raises plain RuntimeErrors for unreadable models
            raise ArtifactError(f"{path} is not a model ONNX Runtime GenAI can load: {str(err).splitlines()[0][:200]}") from None
        self.og = og
        self.config = SimpleNamespace(max_position_embeddings=context)  # what causal_lm.context_window reads

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *, max_new_tokens: int,
                 eos_token_id: int | list[int], pad_token_id: int, stop_strings: list[str] | None = None,
                 tokenizer: Any = None, streamer: Any = None, **search: Any) -> torch.Tensor:
        """Generate like ``transformers``' ``model.generate`` (greedy, beam or sampling).

        Args:
            input_ids: [batch, length] prompts, padded on the left.
            attention_mask: 1 for prompt tokens, 0 for padding (default: all ones).
            max_new_tokens: the most tokens to add to each prompt.
            eos_token_id: the token(s) that end a reply.
            pad_token_id: what fills a row after it ended (as transformers does).
            stop_strings: texts that end a reply (``tokenizer`` decodes to find them).
            tokenizer: needed with ``stop_strings``.
            streamer: a transformers streamer (one prompt only): receives the prompt, then each new token.
            search: ``do_sample``, ``num_beams``, ``temperature``, ``top_p``, ``top_k``, ``repetition_penalty``,
                ``no_repeat_ngram_size``, ``min_new_tokens`` (None means the default).

        Returns:
            [batch, length + new] token ids: the input followed by the new tokens (padded with ``pad_token_id``).
        """
        unknown = sorted(set(search) - SEARCH_OPTIONS - HANDLED)
        if unknown:
            raise ConfigError(f"the onnx-genai engine does not support generation settings {unknown}")
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        prompts = [row[keep.bool()].tolist() for row, keep in zip(input_ids, mask)]
        if streamer is not None and len(prompts) != 1:
            raise ConfigError("streaming generates one prompt at a time")
        eos = {int(e) for e in ([eos_token_id] if isinstance(eos_token_id, int) else eos_token_id)}
        # ONNX Runtime GenAI reads its pad token as padding, so a prompt containing it runs alone.
        alone = [i for i, p in enumerate(prompts) if len(prompts) > 1 and self.pad_id in p]
        together = [i for i in range(len(prompts)) if i not in alone]
        new: dict[int, list[int]] = {}
        for group in ([together] if together else []) + [[i] for i in alone]:
            replies = self._run([prompts[i] for i in group], max_new_tokens, eos, stop_strings or [], tokenizer,
                                streamer, search)
            new.update(zip(group, replies))
        width = max((len(r) for r in new.values()), default=0)
        tail = torch.full((len(prompts), width), pad_token_id, dtype=input_ids.dtype)
        for row, reply in new.items():
            tail[row, : len(reply)] = torch.as_tensor(reply, dtype=input_ids.dtype)
        return torch.cat([input_ids, tail], dim=1)

    def _run(self, prompts: list[list[int]], max_new: int, eos: set[int], stops: list[str], tokenizer: Any,
             streamer: Any, search: dict[str, Any]) -> list[list[int]]:
        """One ONNX Runtime GenAI generator over right-padded prompts; the new tokens of each, cut at its end."""
        og = self.og
        longest = max(len(p) for p in prompts)
        limit = int(self.config.max_position_embeddings)
        if longest + 1 > limit:
            raise ConfigError(f"a prompt of {longest} tokens leaves no room to generate in a context of {limit}")
        grid = np.full((len(prompts), longest), self.pad_id, dtype=np.int32)
        for row, prompt in enumerate(prompts):
            grid[row, : len(prompt)] = prompt
        options: dict[str, Any] = {"max_length": min(longest + max_new, limit), "batch_size": len(prompts)}
        options.update({name: value for name, value in search.items() if value is not None and name in SEARCH_OPTIONS})
        if search.get("min_new_tokens"):
            options["min_length"] = longest + int(search["min_new_tokens"])
        if options.get("do_sample"):
            options["random_seed"] = int(torch.randint(0, 2**31 - 1, ()).item())  # follows torch.manual_seed
        params = og.GeneratorParams(self.engine)
        params.set_search_options(**options)
        generator = og.Generator(self.engine, params)
        generator.append_tokens(grid)
        if streamer is not None:
            streamer.put(torch.as_tensor(prompts[0]))
        beams = int(options.get("num_beams", 1)) > 1
        replies: list[list[int]] = [[] for _ in prompts]
        done = [False] * len(prompts)
        try:
            while not generator.is_done() and not all(done):
                generator.generate_next_token()
                if beams:  # beam search settles its tokens only at the end
                    continue
                for row, token in enumerate(generator.get_next_tokens().tolist()):
                    if done[row]:
                        continue
                    replies[row].append(int(token))
                    if streamer is not None:
                        streamer.put(torch.as_tensor([int(token)]))
                    done[row] = len(replies[row]) >= max_new or token in eos or _stopped(replies[row], stops, tokenizer)
            if beams:
                replies = [_until_end(list(generator.get_sequence(row))[longest:], eos) for row in range(len(prompts))]
        finally:
            if streamer is not None:
                streamer.end()
        return replies

    def forward(self, **batch: torch.Tensor) -> Any:
        """Not available: an onnx-genai model generates; losses and scores need the PyTorch artifact."""
        raise ConfigError("an onnx-genai model only generates; scoring and losses need the PyTorch artifact")


def _stopped(reply: list[int], stops: list[str], tokenizer: Any) -> bool:
    """Whether the end of ``reply`` contains a stop string (only the last tokens are decoded)."""
    if not stops:
        return False
    window = max(len(s) for s in stops) + 2  # every token is at least one character
    text = tokenizer.decode(reply[-window:], skip_special_tokens=True)
    return any(stop in text for stop in stops)


def _until_end(tokens: list[int], eos: set[int]) -> list[int]:
    """``tokens`` up to and including the first end token."""
    for at, token in enumerate(tokens):
        if token in eos:
            return tokens[: at + 1]
    return tokens
