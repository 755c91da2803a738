"""Data augmentation of training records: more examples from few, with the labels kept.

``data.augment: [{name, n, p}, ...]`` adds, for each step, ``n`` augmented copies of every training record (never
validation or test records; after the validation split), seeded by ``train.seed``; ``fit`` reports how many it
added. Augmenters (``AUGMENTERS``; ``register_augmenter`` adds one):

- EDA (Wei & Zou 2019), ``p`` the share of words touched: ``synonym`` (replace words by a WordNet synonym),
  ``insert`` (insert a synonym of a word at a random place), ``swap`` (swap two words), ``delete`` (drop each
  word with probability ``p``).
- ``char_noise``: DeepWordBug-style misspellings of a share ``p`` of the words.
- ``paraphrase``: a rewording by the packaged SmolLM2 through tunelab's own generation path, cached on disk
  (``~/.cache/tunelab/paraphrase`` or ``$TUNELAB_CACHE``) so a second run does not generate again.
- ``entity_swap`` (NER): each entity, with probability ``p``, replaced by another training entity of its type.

A task says what it can keep (``Task.augment_kind``): ``text`` (classification), ``marked_text`` (relation: the
entity markers and what they enclose are never touched; no paraphrase, which could drop them) or ``tokens`` (NER
records of tokens and tags: entity words stay put and keep their tags; misspellings may touch them). QA answer
spans and generation targets cannot be kept: asking is an error.

Example:
    >>> cfg = {..., "data": {"augment": [{"name": "synonym", "n": 1, "p": 0.1}]}}      # doctest: +SKIP
    >>> tunelab.fit(cfg, train=rows)    # "data.augment: +500 synonym" on stderr             # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import ConfigError, DataError
from .registry import AUGMENTERS
from .tags import spans
from .textedits import STOPWORDS, char_edits


@dataclass
class Unit:
    """One word of a record being augmented: its text, its tag (NER; None for text), and whether it may change."""

    text: str
    tag: str | None = None
    fixed: bool = False  # entity markers (relation) and entity words (NER) stay as they are


@dataclass
class Context:
    """What an augmenter may use: the step's ``p``, a seeded ``rng``, lazily loaded WordNet and paraphraser, and
    (NER) the training entities by type."""

    p: float
    rng: random.Random
    kind: str
    entities: dict[str, list[list[str]]] = field(default_factory=dict)
    resources: dict[str, Any] = field(default_factory=dict)

    def synonyms(self, word: str) -> list[str]:
        """Single-word WordNet synonyms of ``word`` (case of the first letter kept)."""
        if "wordnet" not in self.resources:
            from .synonyms import WordNet

            self.resources["wordnet"] = WordNet.load()
        found = self.resources["wordnet"].synonyms(word, limit=10)
        return [w[:1].upper() + w[1:] for w in found] if word[:1].isupper() else found

    def count(self, units: list[Unit]) -> int:
        """How many words a step touches: ``p`` of the record's words, at least one."""
        return max(1, round(self.p * len(units)))


Augmenter = Callable[[list[Unit], Context], list[Unit] | None]


@dataclass
class AugmenterSpec:
    """A registered augmenter: the function and the kinds of record it keeps labels for."""

    apply: Augmenter
    kinds: frozenset[str]



def register_augmenter(name: str, apply: Augmenter, kinds: tuple[str, ...] = ("text", "marked_text", "tokens"),
                       *, replace: bool = False) -> AugmenterSpec:
    """Add an augmentation, usable as ``data.augment: [{name: ...}]``.

    Args:
        name: its config name.
        apply: ``apply(units, ctx)`` -> the new word units (``Unit``), or None when it changes nothing.
        kinds: the record kinds whose labels it keeps: ``text``, ``marked_text`` (relation), ``tokens`` (NER).
        replace: allow replacing an augmentation of the same name.

    Example:
        >>> def shout(units, ctx):
        ...     return [Unit(u.text.upper(), u.tag, u.fixed) for u in units]
        >>> _ = register_augmenter("shout", shout, kinds=("text",))
    """
    return AUGMENTERS.add(name, AugmenterSpec(apply, frozenset(kinds)), replace=replace)


def _movable(units: list[Unit]) -> list[int]:
    return [i for i, u in enumerate(units) if not u.fixed]


def _synonym(units: list[Unit], ctx: Context) -> list[Unit] | None:
    options = [i for i in _movable(units) if units[i].text.isalpha() and units[i].text.lower() not in STOPWORDS]
    ctx.rng.shuffle(options)
    out, done = list(units), 0
    for i in options:
        found = ctx.synonyms(units[i].text)
        if found:
            out[i] = Unit(ctx.rng.choice(found), units[i].tag)
            done += 1
        if done >= ctx.count(units):
            break
    return out if done else None


def _insert(units: list[Unit], ctx: Context) -> list[Unit] | None:
    out, done = list(units), 0
    options = [i for i in _movable(units) if units[i].text.isalpha() and units[i].text.lower() not in STOPWORDS]
    for _ in range(ctx.count(units)):
        ctx.rng.shuffle(options)
        found = next((f for i in options for f in [ctx.synonyms(units[i].text)] if f), None)
        if not found:
            break
        # a new word goes between two words, never inside an entity (before an I- tag)
        places = [k for k in range(len(out) + 1) if k == len(out) or not (out[k].tag or "").startswith("I-")]
        out.insert(ctx.rng.choice(places), Unit(ctx.rng.choice(found), "O" if ctx.kind == "tokens" else None))
        done += 1
    return out if done else None


def _swap(units: list[Unit], ctx: Context) -> list[Unit] | None:
    options = _movable(units)
    if len(options) < 2:
        return None
    out = list(units)
    for _ in range(ctx.count(units)):
        a, b = ctx.rng.sample(options, 2)
        out[a], out[b] = out[b], out[a]
    return out


def _delete(units: list[Unit], ctx: Context) -> list[Unit] | None:
    out = [u for u in units if u.fixed or ctx.rng.random() >= ctx.p]
    if not out:
        out = [units[ctx.rng.choice(_movable(units))]]
    return out if len(out) < len(units) else None


def _char_noise(units: list[Unit], ctx: Context) -> list[Unit] | None:
    options = [i for i in range(len(units)) if not (units[i].fixed and ctx.kind == "marked_text")]  # markers stay
    ctx.rng.shuffle(options)
    out, done = list(units), 0
    for i in options:
        edits = char_edits(units[i].text, ctx.rng)
        if edits:
            out[i] = Unit(ctx.rng.choice(edits), units[i].tag, units[i].fixed)
            done += 1
        if done >= ctx.count(units):
            break
    return out if done else None


def _entity_swap(units: list[Unit], ctx: Context) -> list[Unit] | None:
    tags = [u.tag or "O" for u in units]
    out: list[Unit] = []
    at, changed = 0, False
    for kind, a, b in spans(tags):
        out += units[at:a]
        pool = [e for e in ctx.entities.get(kind, []) if e != [u.text for u in units[a:b]]]
        if pool and ctx.rng.random() < ctx.p:
            words = ctx.rng.choice(pool)
            out += [Unit(w, ("B-" if k == 0 else "I-") + kind, True) for k, w in enumerate(words)]
            changed = True
        else:
            out += units[a:b]
        at = b
    out += units[at:]
    return out if changed else None


def _paraphrase(units: list[Unit], ctx: Context) -> list[Unit] | None:
    text = " ".join(u.text for u in units)
    variant = ctx.resources.setdefault("paraphrase_variant", 0)
    new = ctx.resources["paraphraser"].paraphrase(text, variant)
    return [Unit(w) for w in new.split()] if new and new.strip().lower() != text.strip().lower() else None


WORDS = ("text", "marked_text", "tokens")
for _name, _fn, _kinds in (("synonym", _synonym, WORDS), ("insert", _insert, WORDS), ("swap", _swap, WORDS),
                           ("delete", _delete, WORDS), ("char_noise", _char_noise, WORDS),
                           ("paraphrase", _paraphrase, ("text",)), ("entity_swap", _entity_swap, ("tokens",))):
    register_augmenter(_name, _fn, _kinds)


class Paraphraser:
    """Paraphrases by the packaged SmolLM2 (``model``), generated in batches through tunelab's generation path
    and cached on disk by a hash of the model, the prompt, the text and the variant."""

    PROMPT = ("Rewrite the following sentence with different words but exactly the same meaning and tone. "
              "Answer with the rewritten sentence only.\n\nSentence: {text}")

    def __init__(self, model: str = "smollm2"):
        cache = Path(os.environ.get("TUNELAB_CACHE") or Path.home() / ".cache" / "tunelab") / "paraphrase"
        self.model_name, self.path = model, cache / f"{hashlib.sha256((model + self.PROMPT).encode()).hexdigest()[:16]}.jsonl"
        self.cached: dict[str, str] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:  # a line cut short by a killed run (or edited) is generated again, not trusted
                    row = json.loads(line)
                    self.cached[str(row["key"])] = str(row["text"])
                except (ValueError, KeyError, TypeError):
                    continue
        self.loaded: Any = None

    @staticmethod
    def key(text: str, variant: int) -> str:
        """The cache key of one paraphrase."""
        return hashlib.sha256(f"{variant}\0{text}".encode()).hexdigest()

    def prepare(self, texts: list[str], variant: int) -> None:
        """Generate (in batches) and cache the paraphrases of ``texts`` that are not cached yet."""
        todo = [t for t in dict.fromkeys(texts) if self.key(t, variant) not in self.cached]
        if not todo:
            return
        from .causal_lm import generate_ids, load_causal_lm
        from .config import GenerateConfig
        from .prompts import chat_messages, render_prompt

        if self.loaded is None:
            self.loaded = load_causal_lm(self.model_name)
        model, tokenizer = self.loaded
        prompts = [tokenizer(render_prompt(tokenizer, chat_messages(self.PROMPT.format(text=t), None)),
                             add_special_tokens=False)["input_ids"] for t in todo]
        settings = GenerateConfig(max_new_tokens=64, strategy="sample" if variant else "greedy", temperature=0.8,
                                  seed=variant or None)
        outputs = generate_ids(model, tokenizer, prompts, settings)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            for text, out in zip(todo, outputs):
                clean = out.strip().splitlines()[0].strip().strip('"') if out.strip() else ""
                self.cached[self.key(text, variant)] = clean
                handle.write(json.dumps({"key": self.key(text, variant), "text": clean}, ensure_ascii=False) + "\n")

    def paraphrase(self, text: str, variant: int) -> str:
        """The paraphrase of ``text`` (generated now if ``prepare`` did not)."""
        self.prepare([text], variant)
        return self.cached[self.key(text, variant)]


def augment_records(task: Any, rows: list[dict[str, Any]], steps: list[Any], seed: int,
                    where: str = "data.augment") -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The augmented copies of ``rows`` for each step (the originals are not included), and how many per step.

    Args:
        task: the task, for ``augment_kind`` and its ``augment_units`` / ``augment_record``.
        rows: the training records.
        steps: ``{name, n, p}`` settings (``AugmentStep``).
        seed: the run's seed.
        where: how errors name the setting.
    """
    kind = task.augment_kind
    if kind is None:
        raise ConfigError(f"{where}: the {task.name} task cannot keep its labels under augmentation "
                          "(answer spans, target texts); remove data.augment")
    out: list[dict[str, Any]] = []
    report: dict[str, int] = {}
    entities = _entity_pool(task, rows) if any(s.name == "entity_swap" for s in steps) else {}
    for k, step in enumerate(steps):
        spec = AUGMENTERS.get(step.name)
        if kind not in spec.kinds:
            raise ConfigError(f"{where}[{k}].name: {step.name!r} cannot keep the labels of a {task.name} task "
                              f"(it works on {', '.join(sorted(spec.kinds))} records)")
        ctx = Context(step.p, random.Random(f"{seed}:{k}:{step.name}"), kind, entities)
        made = 0
        for variant in range(step.n):
            ctx.resources["paraphrase_variant"] = variant
            if step.name == "paraphrase":
                ctx.resources.setdefault("paraphraser", Paraphraser(step.model or "smollm2")).prepare(
                    [" ".join(u.text for u in task.augment_units(r)) for r in rows], variant)
            for i, row in enumerate(rows):
                try:
                    units = task.augment_units(row)
                except DataError as err:
                    raise DataError(f"{where}: training record {i}: {err}") from None
                new = spec.apply(units, ctx)
                if new and [u.text for u in new] != [u.text for u in units]:  # a copy that changed nothing is no example
                    out.append(task.augment_record(row, new))
                    made += 1
        report[step.name] = report.get(step.name, 0) + made
    return out, report


def _entity_pool(task: Any, rows: list[dict[str, Any]]) -> dict[str, list[list[str]]]:
    pool: dict[str, list[list[str]]] = {}
    for row in rows:
        units = task.augment_units(row)
        for kind, a, b in spans([u.tag or "O" for u in units]):
            words = [u.text for u in units[a:b]]
            if words not in pool.setdefault(kind, []):
                pool[kind].append(words)
    return pool


__all__ = ["AUGMENTERS", "Context", "Paraphraser", "Unit", "augment_records", "register_augmenter"]
