"""Reader for the Twitter-2015/2017 MNER files (CoNLL-style, one `IMGID:<id>` header per tweet).

Format (see shared/data/SOURCES.md §2): an `IMGID:<id>` line starts a tweet, then one `token<TAB>TAG` line per word,
then a blank line. Twitter-2015 files do not end with a blank line (the last tweet ends at EOF); both are accepted.

Normalisation done while reading:

- `B-OTHER`/`I-OTHER` (Twitter-2015) become `B-MISC`/`I-MISC`, as MMIB's loader does.
- With `fix_bio=True` (the default), an `I-X` tag that does not continue an entity of type X (at the start of a
  tweet, after `O` or after another type) is rewritten to `B-X`. This is the conlleval / seqeval default-mode reading
  of such tags, so entity counts and scores do not change; it only makes every tag sequence valid BIO for the CRF.
  Twitter-2015 train has 186 such tags; Twitter-2017 has none.
- Any tag outside `NER_LABELS` (after the OTHER rename) is a `DataFormatError` naming `file:line`.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from mmib_cli.errors import DataFormatError
from mmib_cli.model.configuration import NER_LABELS

logger = logging.getLogger(__name__)

IMGID_PREFIX = "IMGID:"
ENTITY_TYPES = ("PER", "LOC", "ORG", "MISC")
_TAG_ALIASES = {"OTHER": "MISC"}


@dataclass
class ConllSentence:
    """One tweet of a CoNLL file.

    Attributes:
        words: the tokens, as in the file.
        tags: one BIO tag per word, normalised (OTHER→MISC, stray I- fixed to B- unless `fix_bio=False`).
        image_id: the id from the `IMGID:` header (no `.jpg`), or None when the tweet has no header.
        line: 1-based line number in the file where the tweet starts (its header, else its first token).
    """

    words: list[str]
    tags: list[str]
    image_id: str | None
    line: int


def _normalise_tag(tag: str) -> str:
    """Map a raw tag to the MMIB tag set (only the OTHER→MISC rename; validity is checked by the caller)."""
    if len(tag) > 2 and tag[1] == "-":
        return tag[:2] + _TAG_ALIASES.get(tag[2:], tag[2:])
    return tag


def fix_bio(tags: Sequence[str]) -> tuple[list[str], int]:
    """Rewrite every `I-X` that does not continue an `X` entity to `B-X` (conlleval reading).

    Args:
        tags: BIO tags of one sentence.

    Returns:
        (fixed tags, number of tags changed).
    """
    fixed: list[str] = []
    changed = 0
    prev = "O"
    for tag in tags:
        if tag.startswith("I-") and (prev == "O" or prev[2:] != tag[2:]):
            tag = "B-" + tag[2:]
            changed += 1
        fixed.append(tag)
        prev = tag
    return fixed, changed


def iter_conll(path: str | Path, *, fix_bio_tags: bool = True) -> Iterator[ConllSentence]:
    """Yield the tweets of a Twitter-2015/2017 CoNLL file one by one.

    Args:
        path: the `.txt` file (UTF-8, LF or CRLF line endings; only LF ends a line).
        fix_bio_tags: rewrite stray `I-X` tags to `B-X` (see the module docstring).

    Yields:
        ConllSentence per tweet, in file order.

    Raises:
        DataFormatError: a line is not `token<TAB>TAG`, a tag is unknown, a header has no tokens, or the file is
            not UTF-8; the message names `file:line`.
        FileNotFoundError: `path` does not exist.
    """
    path = Path(path)
    labels = set(NER_LABELS)
    words: list[str] = []
    tags: list[str] = []
    image_id: str | None = None
    start = 0  # line where the open sentence starts; 0 = none open
    fixed_total = 0

    def close() -> ConllSentence | None:
        nonlocal words, tags, image_id, start, fixed_total
        if not start:
            return None
        if not words:
            raise DataFormatError(f"{path}:{start}: 'IMGID:{image_id}' is followed by no token line")
        out_tags = tags
        if fix_bio_tags:
            out_tags, changed = fix_bio(tags)
            fixed_total += changed
        sentence = ConllSentence(words=words, tags=out_tags, image_id=image_id, line=start)
        words, tags, image_id, start = [], [], None, 0
        return sentence

    try:
        with path.open(encoding="utf-8-sig", newline="\n") as handle:
            for lineno, raw in enumerate(handle, start=1):
                line = raw.rstrip("\r\n")
                if not line.strip():
                    sentence = close()
                    if sentence is not None:
                        yield sentence
                    continue
                if line.startswith(IMGID_PREFIX):
                    sentence = close()  # a header without a blank line before it still starts a new tweet
                    if sentence is not None:
                        yield sentence
                    image_id = line[len(IMGID_PREFIX):].strip()
                    if not image_id:
                        raise DataFormatError(f"{path}:{lineno}: empty IMGID header")
                    start = lineno
                    continue
                token, sep, tag = line.rpartition("\t")
                if not sep or not token:
                    raise DataFormatError(
                        f"{path}:{lineno}: expected 'token<TAB>TAG', got {line[:80]!r}"
                    )
                norm = _normalise_tag(tag.strip())
                if norm not in labels:
                    raise DataFormatError(
                        f"{path}:{lineno}: unknown tag {tag!r} (expected one of {', '.join(NER_LABELS)}, "
                        "or B-/I-OTHER)"
                    )
                if not start:
                    start = lineno
                words.append(token)
                tags.append(norm)
            sentence = close()  # Twitter-2015 files end without a blank line
            if sentence is not None:
                yield sentence
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
    if fixed_total:
        logger.debug("%s: %d I- tags without a preceding B- rewritten to B-", path, fixed_total)


def read_conll(path: str | Path, *, fix_bio_tags: bool = True) -> list[ConllSentence]:
    """Read a whole Twitter-2015/2017 CoNLL file.

    Args:
        path: the `.txt` file.
        fix_bio_tags: rewrite stray `I-X` tags to `B-X` (conlleval reading; see the module docstring).

    Returns:
        The tweets in file order.

    Raises:
        DataFormatError: see `iter_conll`.
    """
    return list(iter_conll(path, fix_bio_tags=fix_bio_tags))


def image_path(sentence: ConllSentence, images_dir: str | Path) -> Path | None:
    """The tweet's photo `images_dir/<image_id>.jpg`, or None when it has no id or the file is missing.

    Args:
        sentence: a tweet from `read_conll`.
        images_dir: the flat image folder (e.g. `twitter2015_images/`).

    Returns:
        The existing file's path, else None.
    """
    image_id = sentence.image_id
    if not image_id or "/" in image_id or "\\" in image_id or image_id in (".", ".."):
        return None
    candidate = Path(images_dir) / f"{image_id}.jpg"
    return candidate if candidate.is_file() else None


def entity_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Entity chunks of a BIO tag sequence, conlleval style (a stray `I-X` starts a new entity).

    Args:
        tags: BIO tags of one sentence.

    Returns:
        `(type, start, end)` triples with `end` exclusive, in order.
    """
    spans: list[tuple[str, int, int]] = []
    kind: str | None = None
    begin = 0
    for i, tag in enumerate(tags):
        prefix, typ = (tag[:1], tag[2:]) if len(tag) > 2 and tag[1] == "-" else ("O", "")
        continues = prefix == "I" and kind == typ
        if kind is not None and not continues:
            spans.append((kind, begin, i))
            kind = None
        if prefix in ("B", "I") and not continues:
            kind, begin = typ, i
    if kind is not None:
        spans.append((kind, begin, len(tags)))
    return spans


def conll_stats(sentences: Sequence[ConllSentence]) -> dict:
    """Count tweets, tokens and entities per type (conlleval chunks).

    Args:
        sentences: tweets from `read_conll`.

    Returns:
        `{"sentences", "tokens", "entities": {PER, LOC, ORG, MISC}, "total_entities", "images"}`, where
        `images` counts tweets that have an IMGID.
    """
    entities = dict.fromkeys(ENTITY_TYPES, 0)
    tokens = 0
    images = 0
    for sentence in sentences:
        tokens += len(sentence.words)
        images += sentence.image_id is not None
        for kind, _, _ in entity_spans(sentence.tags):
            entities[kind] = entities.get(kind, 0) + 1
    return {
        "sentences": len(sentences),
        "tokens": tokens,
        "entities": entities,
        "total_entities": sum(entities.values()),
        "images": images,
    }
