"""Word tokenisation with exact character offsets, and word-shape (capitalisation) classes."""
from __future__ import annotations

import re
import unicodedata
from typing import NamedTuple

NUM_WORD_SHAPES = 8  # keep equal to mmib_cli.model.configuration.NUM_WORD_SHAPES
SYMBOL_SHAPE = 7  # word_shape of a word with no letter or digit

# Order matters: URLs first (trailing sentence punctuation is not part of them), then runs of letters/digits/
# underscore, then any single other visible character (punctuation, apostrophe, hyphen, '@', '#', emoji). This matches
# the Twitter-2017 tokenisation ("It ' s", "@ warriors", "# NBA", "Bundesliga_EN", "2014 - 15").
_URL = r"(?i:https?://|www\.)\S+?(?=[.,!?;:)\]}'\"…]*(?:\s|$))"
_TOKEN_RE = re.compile(_URL + r"|\w+|\S", re.UNICODE)
_ATTACHED_CATEGORIES = {"Mn", "Me", "Mc", "Cf"}  # combining marks and format chars (zero-width joiner etc.)
_MARK_CATEGORIES = {"Mn", "Me", "Mc"}
_ZWJ = "\u200d"


class Token(NamedTuple):
    """One word: its text and its `[start, end)` character offsets in the source string."""

    text: str
    start: int
    end: int


def tokenize(text: str) -> list[Token]:
    """Split a post into words with exact char offsets (`text[start:end] == token.text`).

    URLs stay whole, `@`/`#` are split from the following word (as in the Twitter-2017 data), every other
    punctuation mark or emoji is its own token. Characters that belong to the preceding one stay attached, so that
    no character is lost and offsets remain exact: combining marks and zero-width/format characters, letters after
    a combining mark inside a word (Devanagari, Thai...), emoji joined by a zero-width joiner, skin-tone modifiers,
    and the second regional indicator of a flag.

    Args:
        text: the post text.

    Returns:
        The words, in text order, never empty strings, never containing whitespace.
    """
    tokens: list[Token] = []
    for match in _TOKEN_RE.finditer(text):
        start, end = match.span()
        piece = match.group()
        if tokens and tokens[-1].end == start and _continues(tokens[-1].text, piece):
            prev = tokens.pop()
            tokens.append(Token(text[prev.start:end], prev.start, end))
            continue
        tokens.append(Token(piece, start, end))
    return tokens


def _continues(prev: str, piece: str) -> bool:
    """Whether `piece`, right after the token `prev` (no space between), belongs to it."""
    if _is_attached(piece) or prev.endswith(_ZWJ):
        return True
    first, last = piece[0], prev[-1]
    if unicodedata.category(last) in _MARK_CATEGORIES and (first.isalnum() or first == "_"):
        return prev[0].isalnum() or prev[0] == "_"  # a word written with combining vowel signs or viramas
    if "\U0001f3fb" <= first <= "\U0001f3ff" and len(piece) == 1:  # emoji skin-tone modifier
        return True
    return _is_regional(first) and len(prev) == 1 and _is_regional(last)  # 🇺 + 🇸 = one flag


def _is_regional(ch: str) -> bool:
    return "\U0001f1e6" <= ch <= "\U0001f1ff"


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
        return SYMBOL_SHAPE
    if all(ch.islower() for ch in letters):
        return 1
    if all(ch.isupper() for ch in letters):
        return 4 if len(letters) == 1 else 2
    if letters[0].isupper() and all(ch.islower() for ch in letters[1:]):
        return 3
    return 5
