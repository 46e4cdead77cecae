"""Reader for CoNLL-style NER files: Twitter-2015/2017 (MNER) and WNUT-17.

Format (see shared/data/SOURCES.md §2): an `IMGID:<id>` line starts a tweet, then one `token<TAB>TAG` line per word,
then a blank line. Twitter-2015 files do not end with a blank line (the last tweet ends at EOF); both are accepted.
WNUT-17 files (SOURCES.md §6) have no header and end sentences with a line holding a lone tab.

Normalisation done while reading:

- `B-OTHER`/`I-OTHER` (Twitter-2015) become `B-MISC`/`I-MISC`, as MMIB's loader does.
- WNUT-17 types map to the four MMIB types (`WNUT17_TYPES`): person → PER, location → LOC, corporation and group
  → ORG (WNUT's groups are bands, teams, parties and agencies, which Twitter-2015/2017 tag ORG), product and
  creative-work → MISC (Twitter-2015/2017's MISC holds products and titles of films, shows and songs).
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
WNUT17_TYPES = {
    "person": "PER",
    "location": "LOC",
    "corporation": "ORG",
    "group": "ORG",  # bands, sports teams, parties, agencies: organisations in Twitter-2015/2017
    "product": "MISC",  # Twitter-2015/2017 MISC holds products (Guinness, SharePoint, NHL 17) ...
    "creative-work": "MISC",  # ... and titles of films, shows and songs (American Sniper, 30 Rock)
}
"""WNUT-17 entity types → the four MMIB types (see the module docstring)."""
_TAG_ALIASES = {"OTHER": "MISC", **WNUT17_TYPES}


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


def normalise_tag(tag: str) -> str:
    """A tag as `read_conll` reads it (`B-OTHER` -> `B-MISC`, WNUT-17 types -> MMIB types); not checked."""
    return _normalise_tag(tag)


def is_readable_tag(tag: str) -> bool:
    """Whether `read_conll` accepts `tag` (an MMIB tag, or one of its aliases such as `B-OTHER` or a WNUT-17 type)."""
    return _normalise_tag(tag) in NER_LABELS


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


class _SentenceBuilder:
    """Collects the lines of one sentence and turns them into a ConllSentence (BIO-fixed when asked)."""

    def __init__(self, path: Path, fix_bio_tags: bool) -> None:
        self.path = path
        self.fix_bio_tags = fix_bio_tags
        self.fixed_total = 0
        self._reset()

    def _reset(self) -> None:
        self.words: list[str] = []
        self.tags: list[str] = []
        self.image_id: str | None = None
        self.start = 0  # line where the open sentence starts; 0 = none open

    def open_header(self, image_id: str, lineno: int) -> None:
        self.image_id, self.start = image_id, lineno

    def add(self, word: str, tag: str, lineno: int) -> None:
        if not self.start:
            self.start = lineno
        self.words.append(word)
        self.tags.append(tag)

    def close(self) -> ConllSentence | None:
        """The open sentence (None when none is open); the builder is empty afterwards."""
        if not self.start:
            return None
        if not self.words:
            raise DataFormatError(f"{self.path}:{self.start}: 'IMGID:{self.image_id}' is followed by no token line")
        tags = self.tags
        if self.fix_bio_tags:
            tags, changed = fix_bio(tags)
            self.fixed_total += changed
        sentence = ConllSentence(words=self.words, tags=tags, image_id=self.image_id, line=self.start)
        self._reset()
        return sentence


def _parse_token_line(line: str, path: Path, lineno: int, labels: set[str]) -> tuple[str, str]:
    """`token<TAB>TAG` → (token, normalised tag); a malformed line or an unknown tag is a DataFormatError."""
    token, sep, tag = line.rpartition("\t")
    if not sep or not token:
        raise DataFormatError(f"{path}:{lineno}: expected 'token<TAB>TAG', got {line[:80]!r}")
    norm = _normalise_tag(tag.strip())
    if norm not in labels:
        raise DataFormatError(
            f"{path}:{lineno}: unknown tag {tag!r} (expected one of {', '.join(NER_LABELS)}, B-/I-OTHER, or a "
            f"WNUT-17 type: {', '.join(WNUT17_TYPES)})"
        )
    return token, norm


def iter_conll(path: str | Path, *, fix_bio_tags: bool = True) -> Iterator[ConllSentence]:
    """Yield the sentences of a Twitter-2015/2017 or WNUT-17 CoNLL file one by one.

    Args:
        path: the file (UTF-8, LF or CRLF line endings; only LF ends a line). A line of only whitespace (WNUT-17
            writes a lone tab) ends a sentence like an empty one.
        fix_bio_tags: rewrite stray `I-X` tags to `B-X` (see the module docstring).

    Yields:
        ConllSentence per sentence, in file order.

    Raises:
        DataFormatError: a line is not `token<TAB>TAG`, a tag is unknown, a header has no tokens, or the file is
            not UTF-8; the message names `file:line`.
        FileNotFoundError: `path` does not exist.
    """
    path = Path(path)
    labels = set(NER_LABELS)
    builder = _SentenceBuilder(path, fix_bio_tags)
    try:
        with path.open(encoding="utf-8-sig", newline="\n") as handle:
            for lineno, raw in enumerate(handle, start=1):
                line = raw.rstrip("\r\n")
                is_header = line.startswith(IMGID_PREFIX)
                if not line.strip() or is_header:  # a header without a blank line before it still starts a tweet
                    sentence = builder.close()
                    if sentence is not None:
                        yield sentence
                    if is_header:
                        builder.open_header(_header_image_id(line, path, lineno), lineno)
                    continue
                builder.add(*_parse_token_line(line, path, lineno, labels), lineno)
            sentence = builder.close()  # Twitter-2015 files end without a blank line
            if sentence is not None:
                yield sentence
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
    if builder.fixed_total:
        logger.debug("%s: %d I- tags without a preceding B- rewritten to B-", path, builder.fixed_total)


def _header_image_id(line: str, path: Path, lineno: int) -> str:
    image_id = line[len(IMGID_PREFIX):].strip()
    if not image_id:
        raise DataFormatError(f"{path}:{lineno}: empty IMGID header")
    return image_id


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
