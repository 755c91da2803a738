"""Tag schemes for sequence labelling: detect, convert to BIO (IOB2), repair, and read spans.

Every scheme is converted to BIO on reading, so training, metrics (seqeval, strict IOB2) and decoding
deal with one scheme. Invalid sequences (``I-PER`` after ``O``, ``E-ORG`` without a start, ...) are
repaired the way a reader would read them — the tag starts a new entity — and counted, never silently
mislabelled; unknown prefixes are errors.

Example:
    >>> to_bio(["B-PER", "M-PER", "E-PER", "S-LOC", "O"], "bmes")[0]
    ['B-PER', 'I-PER', 'I-PER', 'B-LOC', 'O']
    >>> spans(["B-PER", "I-PER", "O", "B-LOC"])
    [('PER', 0, 2), ('LOC', 3, 4)]
"""

from __future__ import annotations

PREFIXES = {
    "bio": {"B", "I"},
    "iob1": {"B", "I"},
    "bioes": {"B", "I", "E", "S"},
    "bmes": {"B", "M", "E", "S"},
}


class TagError(ValueError):
    """A tag that no scheme can read; the message says which and why."""


def split_tag(tag: str) -> tuple[str, str | None]:
    """('B', 'PER') for 'B-PER'; ('O', None) for 'O'."""
    if tag == "O":
        return "O", None
    prefix, sep, kind = tag.partition("-")
    if not sep or not kind or len(prefix) != 1:
        raise TagError(f"tag {tag!r} is neither 'O' nor PREFIX-TYPE (like B-PER)")
    return prefix.upper(), kind


def detect_scheme(tag_lists: list[list[str]]) -> str:
    """The tag scheme of tag sequences from their prefixes: bmes (an M), bioes (an E or S), else bio."""
    prefixes = {split_tag(t)[0] for tags in tag_lists for t in tags} - {"O"}
    if "M" in prefixes:
        return "bmes"
    if prefixes & {"E", "S"}:
        return "bioes"
    return "bio"


def to_bio(tags: list[str], scheme: str) -> tuple[list[str], int]:
    """Convert one sequence to BIO; returns (bio tags, number of repaired positions)."""
    allowed = PREFIXES[scheme]
    out: list[str] = []
    repairs = 0
    prev_kind: str | None = None  # type of the entity open at the previous position (None: none open)
    for tag in tags:
        prefix, kind = split_tag(tag)
        if prefix == "O":
            out.append("O")
            prev_kind = None
            continue
        if prefix not in allowed:
            raise TagError(f"tag {tag!r}: prefix {prefix!r} is not part of the {scheme.upper()} scheme "
                           f"(allowed: {', '.join(sorted(allowed))} and O)")
        continues = prefix in ("I", "M", "E")
        if scheme == "iob1" and prefix == "I":
            # IOB1: I- continues a same-type entity or starts one; B- only splits two adjacent entities.
            out.append(f"I-{kind}" if prev_kind == kind else f"B-{kind}")
        elif continues:
            if prev_kind == kind:
                out.append(f"I-{kind}")
            else:
                out.append(f"B-{kind}")  # a continuation with nothing to continue starts an entity
                repairs += 1
        else:  # B or S
            out.append(f"B-{kind}")
        # After E- or S- the entity is closed; an I-/M-/E- right after it is a repair case.
        prev_kind = None if prefix in ("E", "S") else kind
    return out, repairs


def spans(bio: list[str], strict: bool = False) -> list[tuple[str, int, int]]:
    """Entities as (type, start, end) over positions, end exclusive. A stray I- starts an entity, unless
    ``strict`` (seqeval's strict IOB2, what the NER metrics count): then it belongs to no entity.

    Example:
        >>> spans(["B-PER", "I-PER", "O", "I-LOC"]), spans(["B-PER", "I-PER", "O", "I-LOC"], strict=True)
        ([('PER', 0, 2), ('LOC', 3, 4)], [('PER', 0, 2)])
    """
    found: list[tuple[str, int, int]] = []
    kind: str | None = None
    start = 0
    for i, tag in enumerate(bio):
        prefix, this = split_tag(tag)
        if prefix == "I" and this == kind:
            continue
        if kind is not None:
            found.append((kind, start, i))
            kind = None
        if prefix == "B" or (prefix == "I" and not strict):
            kind, start = this, i
    if kind is not None:
        found.append((kind, start, len(bio)))
    return found
