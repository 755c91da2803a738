"""Words and their character offsets: how raw text is split into the words NER labels, and how pre-split
tokens are joined back into text (shared by fine-tuned and prompted entity extraction).

Example:
    >>> split_words("Hi, Ann!")[0]
    ['Hi', ',', 'Ann', '!']
"""

from __future__ import annotations

import re
from collections import Counter

# A word is a run of letters/digits, or one punctuation mark; CJK characters are words of their own
# (Chinese NER datasets label characters).
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3000-\u303f\uff00-\uffef"
WORD_RE = re.compile(rf"[{_CJK}]|[^\s{_CJK}\w]|[^\W{_CJK}]+")


def split_words(text: str, pattern: str | None = None) -> tuple[list[str], list[tuple[int, int]]]:
    """Words and their character offsets in ``text``; ``pattern`` is the training data's word convention
    (``word_pattern``), the default splits every punctuation mark off."""
    matches = list((re.compile(pattern) if pattern else WORD_RE).finditer(text))
    return [m.group() for m in matches], [(m.start(), m.end()) for m in matches]


def word_pattern(tokens: list[str], min_count: int = 2) -> str | None:
    """The word-splitting convention of pre-split training tokens, as a regex for raw text at prediction.

    Punctuation that the training data keeps inside words stays inside them: a mark that starts tokens
    before letters or digits (``@user``, ``#tag``) and a mark that joins letters or digits (``New-York``,
    ``U.S``, ``don't``), each seen at least ``min_count`` times. Without any, the default split (every
    punctuation mark a word of its own) already matches, and None is returned.
    """
    alnum = rf"[^\W{_CJK}]"
    prefix: Counter[str] = Counter()
    inner: Counter[str] = Counter()
    for tok in tokens:
        if len(tok) < 2:
            continue
        if re.match(rf"[^\s\w{_CJK}]{alnum}", tok):
            prefix[tok[0]] += 1
        for m in re.finditer(rf"(?<={alnum})([^\s\w{_CJK}])(?={alnum})", tok):
            inner[m.group(1)] += 1
    pre = "".join(sorted(re.escape(c) for c, n in prefix.items() if n >= min_count))
    inn = "".join(sorted(re.escape(c) for c, n in inner.items() if n >= min_count))
    if not pre and not inn:
        return None
    word = (f"[{pre}]?" if pre else "") + f"{alnum}+" + (f"(?:[{inn}]{alnum}+)*" if inn else "")
    return rf"[{_CJK}]|{word}|[^\s{_CJK}\w]"


def join_tokens(tokens: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """A text for pre-split tokens (space-joined; CJK characters joined without spaces) and offsets."""
    text, offsets = "", []
    for i, tok in enumerate(tokens):
        both_cjk = len(tok) == 1 and len(tokens[i - 1]) == 1 and re.match(f"[{_CJK}]", tok) \
            and re.match(f"[{_CJK}]", tokens[i - 1])
        if i and not both_cjk:
            text += " "
        offsets.append((len(text), len(text) + len(tok)))
        text += tok
    return text, offsets
