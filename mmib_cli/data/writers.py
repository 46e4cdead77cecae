"""Writers for the two training formats, the inverses of `conll.read_conll` and `mnre.read_mnre`.

Both formats are line formats read back by `mmib train`, and their content can come from untrusted posts (an export
of annotated posts, a Label Studio export). A writer therefore either writes what reads back exactly or refuses the
sentence (`UnwritableExample`, a ValueError): no word, tag or image name can add a token, split a sentence or make
the file unreadable. What is normalised, and so read back normalised: whitespace and U+FEFF inside a word are
removed (the reader splits on whitespace; a BOM would vanish at the start of the file), an empty word becomes `_`,
tags are written in the reader's tag set (`B-OTHER` as `B-MISC`, a stray `I-X` as `B-X`, as the reader reads them).
What is refused: a word that would read as a header (`IMGID:...`), an image id with whitespace or control
characters, text that is not valid Unicode (lone surrogates), an MNRE line longer than the reader accepts.
"""
from __future__ import annotations

import logging
import unicodedata
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from mmib_cli.data.conll import IMGID_PREFIX, ConllSentence, fix_bio, normalise_tag
from mmib_cli.data.mnre import MAX_LINE_CHARS, MNREInstance
from mmib_cli.model.configuration import NER_LABELS, RE_LABELS

logger = logging.getLogger(__name__)

__all__ = ["UnwritableExample", "conll_block", "conll_sentence", "conll_word", "mnre_line", "write_conll",
           "write_mnre"]


class UnwritableExample(ValueError):
    """A sentence or instance that its line format cannot hold so that it reads back the same."""


def _unicode(text: str, what: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UnwritableExample(f"{what} {text[:40]!r} is not valid Unicode (a lone surrogate)") from None
    return text


def conll_word(word: str) -> str:
    """A word as the CoNLL file holds it: whitespace and U+FEFF removed, `_` when nothing is left.

    Raises:
        UnwritableExample: the word would read as an `IMGID:` header, or is not valid Unicode.
    """
    text = "".join(_unicode(str(word), "word").replace("\ufeff", "").split()) or "_"
    if text.startswith(IMGID_PREFIX):
        raise UnwritableExample(f"word {text[:40]!r} would read as an {IMGID_PREFIX} header line")
    return text


def _image_id(image_id: str | None) -> str | None:
    if image_id is None or not str(image_id).strip():
        return None
    text = _unicode(str(image_id), "image id")
    if any(ch.isspace() or unicodedata.category(ch)[0] == "C" or ch == "\ufeff" for ch in text):
        raise UnwritableExample(f"image id {text[:40]!r} holds whitespace or control characters")
    return text


def conll_sentence(sentence: ConllSentence) -> ConllSentence:
    """The sentence exactly as `read_conll` will read it back from `conll_block(sentence)`.

    Raises:
        UnwritableExample: see `conll_word`; a tag the reader does not know; words and tags of unequal length or
            no word at all.
    """
    if len(sentence.words) != len(sentence.tags) or not sentence.words:
        raise UnwritableExample("a CoNLL sentence needs one tag per word and at least one word")
    tags = []
    for tag in sentence.tags:
        norm = normalise_tag(str(tag).strip()) if isinstance(tag, str) else None
        if norm not in NER_LABELS:
            raise UnwritableExample(f"tag {tag!r} is not one `mmib train ner` reads")
        tags.append(norm)
    return ConllSentence([conll_word(w) for w in sentence.words], fix_bio(tags)[0], _image_id(sentence.image_id),
                         sentence.line)


def conll_block(sentence: ConllSentence) -> str:
    """One tweet in the Twitter-2015/2017 layout: `IMGID:<id>` (when it has one), `word<TAB>tag` lines, a blank line.

    Raises:
        UnwritableExample: the sentence cannot be written so that it reads back the same (see `conll_sentence`).
    """
    written = conll_sentence(sentence)
    lines = [f"{IMGID_PREFIX}{written.image_id}"] if written.image_id else []
    lines += [f"{word}\t{tag}" for word, tag in zip(written.words, written.tags)]
    return "\n".join(lines) + "\n\n"


def mnre_line(instance: MNREInstance) -> str:
    """One MNRE line (a Python dict literal, as `read_mnre` parses it; `repr` escapes every character).

    Raises:
        UnwritableExample: no words, a span outside them, an unknown relation, or a line longer than the reader reads.
    """
    words = [_unicode(str(w), "word") for w in instance.words]
    if not words:
        raise UnwritableExample("an MNRE instance needs at least one word")
    for name, (start, end) in (("head", instance.head), ("tail", instance.tail)):
        if not 0 <= start < end <= len(words):
            raise UnwritableExample(f"{name} span {[start, end]} is not within the {len(words)} words")
    if instance.relation not in RE_LABELS:
        raise UnwritableExample(f"relation {instance.relation!r} is not an MNRE label")
    record = {"token": words,
              "h": {"name": str(instance.head_name), "pos": list(instance.head)},
              "t": {"name": str(instance.tail_name), "pos": list(instance.tail)},
              "img_id": str(instance.image_id or "none.jpg"), "relation": instance.relation}
    line = repr(record)
    if len(line) > MAX_LINE_CHARS:
        raise UnwritableExample(f"the MNRE line is {len(line)} characters, over the {MAX_LINE_CHARS} the reader reads")
    return line + "\n"


def write_conll(path: str | Path, sentences: Iterable[ConllSentence]) -> int:
    """Write sentences as a CoNLL file (through a new temporary file renamed into place); returns how many.

    A sentence that cannot be written so that it reads back the same is left out with a warning.
    """
    return _write_readable(path, sentences, conll_block, "sentence")


def write_mnre(path: str | Path, instances: Iterable[MNREInstance]) -> int:
    """Write instances as an MNRE file (through a new temporary file renamed into place); returns how many.

    An instance that cannot be written so that it reads back the same is left out with a warning.
    """
    return _write_readable(path, instances, mnre_line, "instance")


def _write_readable(path: str | Path, examples: Iterable[Any], encode: Callable[[Any], str], what: str) -> int:
    """Encode each example (one that `encode` refuses is left out with a warning) and write them atomically."""
    from mmib_cli.storage.format import atomic_write

    parts = []
    for example in examples:
        try:
            parts.append(encode(example))
        except UnwritableExample as exc:
            logger.warning("%s: %s of line %s left out: %s", path, what, example.line, exc)
    atomic_write(Path(path), "".join(parts))
    return len(parts)
