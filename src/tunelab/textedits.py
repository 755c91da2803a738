"""Small, meaning-keeping edits of words, shared by attacks and data augmentation: DeepWordBug-style
misspellings (``char_edits``) and the English stopwords both leave alone.

Example:
    >>> import random
    >>> char_edits("film", random.Random(0))[:3]
    ['flim', 'filh', 'fil']
"""

from __future__ import annotations

import random

STOPWORDS = frozenset("""a about above after again against all am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further had has have having he her
here hers herself him himself his how i if in into is it its itself just me more most my myself no nor not of off on once
only or other our ours ourselves out over own same she should so some such than that the their theirs them themselves
then there these they this those through to too under until up very was we were what when where which while who whom why
will with would you your yours yourself yourselves 's n't""".split())

KEYBOARD = ["qwertyuiop", "asdfghjkl", "zxcvbnm"]


def _neighbours() -> dict[str, str]:
    """Each letter's neighbours on a QWERTY keyboard (same row and the rows above and below)."""
    where = {c: (r, k) for r, row in enumerate(KEYBOARD) for k, c in enumerate(row)}
    out = {}
    for c, (r, k) in where.items():
        out[c] = "".join(d for d, (r2, k2) in where.items() if d != c and abs(r2 - r) <= 1 and abs(k2 - k) <= 1)
    return out


NEIGHBOURS = _neighbours()


def char_edits(word: str, rng: random.Random) -> list[str]:
    """Up to eight misspellings of ``word`` (DeepWordBug's edits at two random positions): neighbouring letters
    swapped, a keyboard-neighbour typo, a letter deleted, a letter inserted. Words under two letters, or not
    alphabetic, get none."""
    if len(word) < 2 or not word.isalpha():
        return []
    out: list[str] = []
    for _ in range(2):
        i = rng.randrange(len(word) - 1)
        out.append(word[:i] + word[i + 1] + word[i] + word[i + 2:])  # swap neighbours
        j = rng.randrange(len(word))
        near = NEIGHBOURS.get(word[j].lower())
        if near:
            c = rng.choice(near)
            out.append(word[:j] + (c.upper() if word[j].isupper() else c) + word[j + 1:])  # keyboard typo
        out.append(word[:j] + word[j + 1:])  # delete
        out.append(word[:j] + rng.choice("abcdefghijklmnopqrstuvwxyz") + word[j:])  # insert
    return [c for c in dict.fromkeys(out) if c and c != word]


__all__ = ["NEIGHBOURS", "STOPWORDS", "char_edits"]
