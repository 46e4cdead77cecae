"""Word tokenisation with exact character offsets, and word-shape (capitalisation) classes."""
from __future__ import annotations

import re
import unicodedata
from typing import NamedTuple

NUM_WORD_SHAPES = 8  # keep equal to mmib_cli.model.configuration.NUM_WORD_SHAPES

# Order matters: URLs first, then runs of letters/digits/underscore, then any single other visible character
# (punctuation, apostrophe, hyphen, '@', '#', emoji). This matches the Twitter-2015/2017 tokenisation
# ("It ' s", "@ warriors", "# NBA", "Bundesliga_EN").
_TOKEN_RE = re.compile(r"https?://\S+|www\.\S+|\w+|\S", re.UNICODE)
_ATTACHED_CATEGORIES = {"Mn", "Me", "Mc", "Cf"}  # combining marks and format chars (zero-width joiner etc.)


class Token(NamedTuple):
    """One word: its text and its `[start, end)` character offsets in the source string."""

    text: str
    start: int
    end: int


def tokenize(text: str) -> list[Token]:
    """Split a post into words with exact char offsets (`text[start:end] == token.text`).

    URLs stay whole, `@`/`#` are split from the following word (as in the Twitter-2015/2017 data), every other
    punctuation mark or emoji is its own token, and combining marks / zero-width characters stay attached to the
    preceding token so that no character is lost and offsets remain exact.
    """
    tokens: list[Token] = []
    for match in _TOKEN_RE.finditer(text):
        start, end = match.span()
        piece = match.group()
        if tokens and tokens[-1].end == start and (_is_attached(piece) or tokens[-1].text.endswith("\u200d")):
            prev = tokens.pop()
            tokens.append(Token(text[prev.start:end], prev.start, end))
            continue
        tokens.append(Token(piece, start, end))
    return tokens


def _is_attached(piece: str) -> bool:
    return all(unicodedata.category(ch) in _ATTACHED_CATEGORIES or ch in "\ufe0f\u200d" for ch in piece)


def word_shape(word: str) -> int:
    """Capitalisation class of a word, in `range(1, NUM_WORD_SHAPES)` (0 is reserved for special/pad pieces).

    1 lower, 2 UPPER (2+ letters), 3 Title, 4 single capital letter, 5 mIxEd, 6 contains a digit, 7 no letter or digit.
    """
    letters = [ch for ch in word if ch.isalpha()]
    if any(ch.isdigit() for ch in word):
        return 6
    if not letters:
        return 7
    if all(ch.islower() for ch in letters):
        return 1
    if all(ch.isupper() for ch in letters):
        return 4 if len(letters) == 1 else 2
    if letters[0].isupper() and all(ch.islower() for ch in letters[1:]):
        return 3
    return 5
