"""Prompt templates: validated slots and rendering through the model's chat template (each task keeps its
own default template).

A template is a Python format string. Each task allows a fixed set of slots (``Task.prompt_slots``) and
every template must contain ``{text}``; anything else is an error at config time, not a silent KeyError
mid-run.

Example:
    >>> from tunelab.prompts import check_template
    >>> slots = {"text", "text_pair", "labels"}
    >>> check_template("Review: {text}\\nSentiment:", slots, "prompt.template")
    >>> check_template("Review: {review}", slots, "prompt.template")
    Traceback (most recent call last):
    ...
    ValueError: prompt.template: unknown slot {review}; allowed: {labels}, {text}, {text_pair}
"""

from __future__ import annotations

import string
from typing import Any

# A plain chat format for causal LMs that ship without a chat template (base models).
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | capitalize }}: {{ message['content'] }}\n\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def template_slots(template: str) -> set[str]:
    """The ``{slot}`` names a template uses."""
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as err:  # e.g. a lone "{"
        raise ValueError(f"not a valid template ({err}); write a literal brace as {{{{ or }}}}") from None


def check_template(template: str, allowed: set[str] | frozenset[str], field: str) -> None:
    """Raise ValueError naming ``field`` if the template lacks {text} or uses a slot not in ``allowed``."""
    try:
        slots = template_slots(template)
    except ValueError as err:
        raise ValueError(f"{field}: {err}") from None
    if "" in slots:
        raise ValueError(f"{field}: empty slot {{}}; name it, e.g. {{text}}")
    unknown = sorted(slots - allowed)
    if unknown:
        raise ValueError(f"{field}: unknown slot {{{unknown[0]}}}; allowed: "
                         + ", ".join(f"{{{s}}}" for s in sorted(allowed)))
    if "text" not in slots:
        raise ValueError(f"{field}: the template has no {{text}} slot, so the input would never reach the model")


def fill(template: str, **values: Any) -> str:
    """The template with its slots filled (None values are left out)."""
    return template.format(**{k: v for k, v in values.items() if v is not None})


def ensure_chat_template(tokenizer: Any) -> None:
    """Give a tokenizer without a chat template a plain one (base models)."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE


def chat_messages(user: str, system: str | None = None, answer: str | None = None) -> list[dict[str, str]]:
    """A chat: an optional system turn, the user turn, and an optional assistant answer."""
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": user})
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


def render_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The text the model continues from: the conversation so far plus the assistant's turn opening."""
    ensure_chat_template(tokenizer)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
