"""Robustness under attack: how often small, meaning-keeping edits flip a model's right predictions.

``tunelab attack ART DATA --recipe char|word`` (and ``tunelab.attack``) attacks each correctly predicted record
of a sample: words are ranked by how much deleting each lowers the gold label's probability (TextAttack's
"greedy word importance ranking"), then, most important first, each is replaced by the candidate that lowers
it most, until the prediction flips or the budget (a fraction of the words) is spent. Recipes (``RECIPES``):

- ``char`` — DeepWordBug-style (Gao et al. 2018) character edits of a word: swap two neighbouring letters,
  replace one by a keyboard neighbour, delete one, insert one (two random positions each).
- ``word`` — TextFooler-style (Jin et al. 2020) synonym substitution: WordNet synonyms (offline, ``make
  wordnet``) of non-stopwords, kept only when the attacked sentence stays similar to the original (cosine of the
  packaged MiniLM sentence embeddings >= ``similarity``; the offline stand-in for TextFooler's Universal Sentence
  Encoder, which needs TF-Hub). TextFooler's counter-fitted word vectors and part-of-speech check are not used:
  WordNet's synsets already hold only synonyms.

TextAttack itself is not used: its 0.3 release needs flair, LanguageTool (a Java download at run time),
OpenHowNet data and TF-Hub, none of which installs or runs offline here.

Reported: clean accuracy on the sample, accuracy under attack, attack success rate (flipped / right before),
words perturbed (count and share of the sentence, over successful attacks) and model queries per attacked
record, with examples.

Example:
    >>> report = tunelab.attack("runs/sst2", "dev.tsv", recipe="word", n=200)           # doctest: +SKIP
    >>> report["accuracy_under_attack"], report["attack_success_rate"]                  # doctest: +SKIP
    (0.41, 0.52)
"""

from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import ConfigError, DataError
from .explain import EXPLAINERS, Model, Subject, subject_for
from .predictor import Predictor
from .registry import Registry
from .textedits import STOPWORDS, char_edits


@dataclass
class Recipe:
    """An attack: ``candidates(word, rng)`` -> replacement strings; ``skips(word)``: never attacked;
    ``similar(original, attacked_texts)`` -> keep mask (None: no sentence constraint)."""

    candidates: Callable[[str, random.Random], list[str]]
    skips: Callable[[str], bool]
    similar: Callable[[str, list[str]], list[bool]] | None = None


def _char_recipe(options: dict[str, Any]) -> Recipe:
    return Recipe(char_edits, lambda word: not word.isalpha() or len(word) < 2)


def _word_recipe(options: dict[str, Any]) -> Recipe:
    from .sentence_embeddings import Embedder
    from .synonyms import WordNet

    wordnet = WordNet.load()
    embedder = Embedder.load(options.get("similarity_model", "minilm"))
    threshold = float(options.get("similarity", 0.8))
    cache: dict[str, np.ndarray] = {}

    def candidates(word: str, rng: random.Random) -> list[str]:
        found = wordnet.synonyms(word, limit=int(options.get("synonyms", 20)))
        if word[:1].isupper():
            found = [w[:1].upper() + w[1:] for w in found]
        return found

    def similar(original: str, texts: list[str]) -> list[bool]:
        if original not in cache:
            cache[original] = embedder.encode([original])[0]
        vectors = embedder.encode(texts)
        return list(vectors @ cache[original] >= threshold)  # unit vectors: the dot product is the cosine

    return Recipe(candidates, lambda word: word.lower() in STOPWORDS or not word.isalpha(), similar)


RECIPES: Registry[Callable[[dict[str, Any]], Recipe]] = Registry("attack recipe")
RECIPES.add("char", _char_recipe)
RECIPES.add("word", _word_recipe)


def attack_one(model: Model, subject: Subject, recipe: Recipe, budget: float, rng: random.Random) -> dict[str, Any]:
    """Attack one correctly predicted record (``subject.target`` is its gold label); returns what happened."""
    n = len(subject.words)
    importance = EXPLAINERS.get("occlusion")(model, subject, {})["attributions"]
    queries = n
    order = sorted((i for i in range(n) if not recipe.skips(subject.words[i])), key=lambda i: -importance[i])
    allowed = max(1, math.floor(budget * n))
    changes: dict[int, str] = {}
    score = subject.score
    for i in order:
        if len(changes) >= allowed:
            break
        options = recipe.candidates(subject.words[i], rng)
        records = [subject.replacing({**changes, i: c}) for c in options]
        if recipe.similar is not None and records:
            keep = recipe.similar(subject.text, [r[subject.column] for r in records])
            options = [c for c, k in zip(options, keep) if k]
            records = [r for r, k in zip(records, keep) if k]
        if not records:
            continue
        predictions = model.predict(records)
        queries += len(records)
        scored = [(model.task.explain_score(p, subject.target), p.get("label"), c, r)
                  for p, c, r in zip(predictions, options, records)]
        best = min(scored, key=lambda x: x[0])
        if best[0] >= score:
            continue  # no candidate for this word helps
        changes[i], score = best[2], best[0]
        if best[1] != subject.target:
            return {"success": True, "attacked": best[3][subject.column], "label_after": best[1], "score_after": score,
                    "words_changed": len(changes), "words": n, "queries": queries}
    return {"success": False, "attacked": subject.replacing(changes)[subject.column], "label_after": subject.target,
            "score_after": score, "words_changed": len(changes), "words": n, "queries": queries}


def attack(model: str | Path | Predictor, data: Any, *, recipe: str = "word", n: int = 500, budget: float = 0.25,
           seed: int = 0, examples: int = 10, quiet: bool = False, **options: Any) -> dict[str, Any]:
    """Attack a label model (classification, relation, prompted classification) on labelled data.

    Args:
        model: an artifact (or run) directory, or a loaded Predictor.
        data: labelled records in the training columns.
        recipe: ``char`` or ``word`` (``RECIPES``).
        n: attack a seeded sample of this many records (all when fewer).
        budget: at most this fraction of a record's words is changed (at least one word).
        seed: for the sample and the character edits.
        examples: how many successful attacks to return as examples.
        quiet: no progress on stderr.
        options: recipe settings: ``similarity`` (word: minimum sentence cosine, default 0.8), ``synonyms``
            (word: candidates per word, default 20).

    Returns:
        ``{"recipe", "examples_attacked", "clean_accuracy", "accuracy_under_attack", "attack_success_rate",
        "avg_words_perturbed", "avg_share_perturbed", "avg_queries", "seconds", "examples"}``.

    Raises:
        ConfigError: an unknown recipe, a budget outside (0, 1], or a task attacks do not support.
        DataError: no records, or one without a gold label.
    """
    from .progress import progress

    predictor = model if isinstance(model, Predictor) else Predictor.load(model)
    task = predictor.task
    if not task.explains_by_prediction:
        raise ConfigError(f"tunelab attack supports label tasks (classification, relation, prompted classification); "
                          f"a {task.name} model is not supported")
    if not 0 < budget <= 1:
        raise ConfigError(f"budget: the fraction of words an attack may change, in (0, 1]; got {budget}")
    made = RECIPES.get(recipe)(options)
    records = predictor.as_records(data)
    if not len(records):
        raise DataError(f"{records.source}: no records to attack")
    rng = random.Random(seed)
    if len(records) > n:
        records = records.subset(sorted(rng.sample(range(len(records)), n)))
    golds = [task.gold_label(records, i) for i in range(len(records))]
    started = time.perf_counter()
    explain_model = predictor.explain_model()
    predictions = predictor.predict(records)
    right = [i for i, (p, g) in enumerate(zip(predictions, golds)) if p.get("label") == g]
    results = []
    for i in progress(right, total=len(right), desc=f"attack ({recipe})", unit="record", quiet=quiet):
        subject = subject_for(explain_model, records.rows[i], golds[i])
        outcome = attack_one(explain_model, subject, made, budget, rng)
        results.append({"row": i, "original": subject.text, "gold": golds[i], **outcome})
    won = [r for r in results if r["success"]]
    total = len(records)
    report = {
        "recipe": recipe, "examples_attacked": total, "clean_accuracy": len(right) / total,
        "accuracy_under_attack": (len(right) - len(won)) / total,
        "attack_success_rate": len(won) / len(right) if right else 0.0,
        "avg_words_perturbed": float(np.mean([r["words_changed"] for r in won])) if won else 0.0,
        "avg_share_perturbed": float(np.mean([r["words_changed"] / r["words"] for r in won])) if won else 0.0,
        "avg_queries": float(np.mean([r["queries"] for r in results])) if results else 0.0,
        "budget": budget, "seconds": round(time.perf_counter() - started, 1),
        "examples": [{k: r[k] for k in ("original", "attacked", "gold", "label_after", "words_changed")}
                     for r in won[:examples]],
    }
    if not quiet:
        print(f"tunelab attack: {len(won)} of {len(right)} right predictions flipped", file=sys.stderr)
    return report


__all__ = ["RECIPES", "Recipe", "attack", "attack_one"]
