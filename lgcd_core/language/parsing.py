"""Parse a raw LLM answer into item descriptions (the pseudo texts of paper eq. 4).

Rules, in order:
1. Split into lines; a line holding an inline list ("1. Tea 2. Mug 3. Jam") is split at its numbers.
2. A line is a *list line* when it starts with a number ("1.", "1)", "(1)", "1:", "[1]") or a bullet
   ("-", "*", "•", "+"). If the answer has list lines, only they are kept: unmarked lines are prose
   (preambles like "Sure! Here are...", closing remarks). Otherwise every line is a candidate, and a
   single line is also split at semicolons.
3. Each candidate loses its marker, surrounding quotes and trailing punctuation (markdown emphasis,
   backticks and heading marks are removed from every line first); whitespace is collapsed; it is cut to ``MAX_CHARS``.
4. A candidate is dropped when it is a preamble (ends with ':' or opens with "Sure", "Here are",
   "Based on", ...), has fewer than three letters, is mostly symbols, repeats an earlier one
   (case and punctuation ignored), or repeats one of ``exclude`` (e.g. the user's own history).

An answer with no description left is unusable; the caller records it, never drops it.

An answer that reached the generation cap (``max_new_tokens``) stops mid-item: :func:`parse_answer`
does not read its unfinished last line and marks it ``cut`` when fewer than n complete items remain;
:func:`count_complete_items` lets generation stop as soon as the list is complete.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MAX_CHARS = 200
_NUMBER = r"(?:\(\d{1,3}\)|\[\d{1,3}\]|\d{1,3}[.):\]](?!\d))"
_MARKER = re.compile(rf"^\s*(?:{_NUMBER}|[-*•+·]\s)\s*")
_INLINE_SPLIT = re.compile(rf"\s+(?={_NUMBER}\s+\S)")
_EMPHASIS = re.compile(r"\*\*|__|`|^\s*#{1,6}\s+|(?<=\w)\*|\*(?=\w)")
_PREAMBLE = re.compile(
    r"^(?:sure|certainly|of course|okay|ok|absolutely|here(?:'s| are| is)|based on|given|i (?:would|think|hope|"
    r"recommend|suggest|can)|as an ai|note|these (?:are|products|items)|this shopper|the shopper|in summary)\b",
    re.IGNORECASE,
)
_QUOTES = "\"'“”‘’«»"


def _split_lines(answer: str) -> list[str]:
    lines = []
    for line in (_EMPHASIS.sub("", raw) for raw in answer.splitlines()):
        if _MARKER.match(line):
            lines.extend(_INLINE_SPLIT.split(line.strip()))
        else:
            lines.append(line)
    return [line for line in lines if line.strip()]


def _clean(text: str) -> str:
    text = _MARKER.sub("", text, count=1)
    text = " ".join(text.split())
    previous = None
    while previous != text:
        previous = text
        text = text.strip(_QUOTES + " ").rstrip(".,;:!").strip()
    return text[:MAX_CHARS].rstrip()


def _norm(text: str) -> str:
    return re.sub(r"[^0-9a-z]+", " ", text.lower()).strip()


def _is_description(text: str, raw: str) -> bool:
    letters = sum(c.isalpha() for c in text)
    wordish = sum(c.isalnum() or c.isspace() for c in text)
    return (
        letters >= 3
        and wordish >= 0.6 * len(text)
        and not raw.rstrip().rstrip("*").endswith(":")
        and not _PREAMBLE.match(text)
    )


def parse_descriptions(answer: str, max_items: int | None = None, exclude: Iterable[str] = ()) -> list[str]:
    """Item descriptions from one answer, in answer order, without duplicates (possibly empty)."""
    lines = _split_lines(answer or "")
    listed = [line for line in lines if _MARKER.match(line)]
    if listed:
        candidates = listed
    elif len(lines) == 1:
        candidates = lines[0].split(";")
    else:
        candidates = lines
    seen = {_norm(text) for text in exclude}
    out: list[str] = []
    for raw in candidates:
        text = _clean(raw)
        key = _norm(text)
        if not _is_description(text, raw) or key in seen:
            continue
        seen.add(key)
        out.append(text)
        if max_items is not None and len(out) >= max_items:
            break
    return out


def count_complete_items(text: str) -> int:
    """Descriptions in the finished lines of an answer being generated (the text up to its last newline)."""
    end = text.rfind("\n")
    return len(parse_descriptions(text[:end])) if end >= 0 else 0


def parse_answer(answer: str, n_items: int, exclude: Iterable[str] = (), hit_cap: bool = False) -> tuple[list[str], bool]:
    """``(descriptions, cut)`` of one answer: at most ``n_items`` descriptions, and whether the cap cut it.

    ``hit_cap``: generation stopped at the token cap, so the answer's last line is unfinished and is
    not read (in a one-line inline list, its last item). The answer was ``cut`` when fewer than
    ``n_items`` complete descriptions remain; one that went on past ``n_items`` lost nothing.
    """
    if not hit_cap:
        return parse_descriptions(answer, n_items, exclude=exclude), False
    end = (answer or "").rfind("\n")
    complete = parse_descriptions(answer[:end], exclude=exclude) if end >= 0 else parse_descriptions(answer, exclude=exclude)[:-1]
    return complete[:n_items], len(complete) < n_items
