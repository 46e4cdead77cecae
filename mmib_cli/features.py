"""Featurisation: words → sub-word windows → padded tensor batches, for NER and RE.

Long posts are cut into overlapping windows of at most `max_length` pieces; every word is labelled in at least
one window, and `merge_window_emissions` keeps, for each word, the window in which it has the most context, so
no word is ever silently dropped.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from mmib_cli.text import SYMBOL_SHAPE, word_shape

MARKERS = ("[unused0]", "[unused1]", "[unused2]", "[unused3]")  # <s> </s> <o> </o> around head and tail
PUNCT_MARKERS = ("<", ">", "[", "]")  # pretrained punctuation pieces: distinct, trained embeddings
MAX_PIECES_PER_WORD = 16  # only the first piece is labelled; the rest is context
HASHTAG = "#"


@dataclass
class Window:
    """One model input row: pieces of a (part of a) post plus where its labelled words start."""

    input_ids: list[int]
    word_shape_ids: list[int]
    word_index: list[int] = field(default_factory=list)  # NER: piece position of each labelled word's first piece
    first_word: int = 0  # NER: index in the post of the first labelled word
    num_post_words: int = 0  # NER: number of words of the whole post
    labels: list[int] | None = None  # NER: tag id per labelled word; RE: [relation id]
    head_index: int = 0  # RE: position of the head start marker
    tail_index: int = 0  # RE: position of the tail start marker
    post: int = 0  # index of the post (or pair) in the encoded batch
    weight: float = 1.0  # RE training: weight of this pair in the loss (`--reverse-pairs-weight`)


class Featurizer:
    """Turns word lists into model windows with a fast HF tokenizer (one tokenizer call per batch).

    Args:
        tokenizer: a fast BERT-family tokenizer whose vocab has the four marker tokens.
        max_length: pieces per window, including `[CLS]` and `[SEP]`.
        stride: pieces of overlap between consecutive NER windows.
        markers: RE tokens inserted before/after the head and before/after the tail (`MARKERS` or
            `PUNCT_MARKERS`; the [unused] pieces of uncased BERT vocabularies were never trained and look alike).
        hashtag_words: read a one-word `#name` as the words `#` and `name` would be read: its label sits on
            the first piece of `name` and its `#` pieces get the symbol shape, so the input does not depend on
            whether an upstream tokenizer split the hashtag (`MMIBConfig.hashtag_words`).
    """

    def __init__(self, tokenizer: Any, *, max_length: int = 128, stride: int = 32,
                 markers: Sequence[str] = MARKERS, hashtag_words: bool = False) -> None:
        if max_length < 8:
            raise ValueError(f"max_length must be at least 8, got {max_length}")
        if not 0 <= stride < max_length // 2:
            raise ValueError(f"stride must be in [0, max_length/2), got {stride} for max_length {max_length}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.stride = stride
        self.cls_id = tokenizer.cls_token_id
        self.sep_id = tokenizer.sep_token_id
        self.pad_id = tokenizer.pad_token_id or 0
        self.unk_id = tokenizer.unk_token_id
        if len(markers) != 4:
            raise ValueError(f"markers must be 4 tokens (head start/end, tail start/end), got {markers!r}")
        self.marker_ids = [tokenizer.convert_tokens_to_ids(m) for m in markers]
        if any(i is None or i == self.unk_id for i in self.marker_ids):
            raise ValueError(f"tokenizer vocab lacks the marker tokens {tuple(markers)}")
        hash_id = tokenizer.convert_tokens_to_ids(HASHTAG) if hashtag_words else None
        self.hash_id = None if hash_id == self.unk_id else hash_id

    def prefix_pieces(self, word: str, pieces: Sequence[int]) -> int:
        """How many leading pieces of `word` are its hashtag signs (0 unless `hashtag_words`; at least one
        piece, the label's, is always left)."""
        if self.hash_id is None or not word.startswith(HASHTAG) or not word.lstrip(HASHTAG):
            return 0  # not a hashtag, or only signs ('#', '##')
        count = 0
        while count < len(pieces) - 1 and pieces[count] == self.hash_id:
            count += 1
        return count

    def piece_shapes(self, word: str, pieces: Sequence[int]) -> tuple[int, list[int]]:
        """(index of the labelled piece, shape id of each piece) of one word."""
        prefix = self.prefix_pieces(word, pieces)
        shape = word_shape(word[prefix:] if prefix else word)
        return prefix, [SYMBOL_SHAPE] * prefix + [shape] * (len(pieces) - prefix)

    @classmethod
    def from_config(cls, tokenizer: Any, config: Any) -> "Featurizer":
        """The featurizer an `MMIBConfig` asks for (its `max_length`, `stride`, `entity_markers`, `hashtag_words`)."""
        return cls(tokenizer, max_length=config.max_length, stride=config.stride, markers=config.entity_markers,
                   hashtag_words=getattr(config, "hashtag_words", False))

    # -- pieces ---------------------------------------------------------------------------------------------
    def word_pieces(self, words_batch: Sequence[Sequence[str]]) -> list[list[list[int]]]:
        """Sub-word ids of every word (at least one piece per word: `[UNK]` when the tokenizer yields none)."""
        out: list[list[list[int]]] = [[[] for _ in words] for words in words_batch]
        todo = [i for i, words in enumerate(words_batch) if words]
        if not todo:
            return out
        encoded = self.tokenizer([list(words_batch[i]) for i in todo], is_split_into_words=True,
                                 add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False,
                                 verbose=False)  # long posts are cut into windows: no length warning
        for row, post in enumerate(todo):
            ids = encoded["input_ids"][row]
            for piece, word in zip(ids, encoded.word_ids(row)):
                if word is not None and len(out[post][word]) < MAX_PIECES_PER_WORD:
                    out[post][word].append(piece)
        for pieces in out:
            for w, p in enumerate(pieces):
                if not p:
                    pieces[w] = [self.unk_id]
        return out

    # -- NER ------------------------------------------------------------------------------------------------
    def encode_ner(self, words_batch: Sequence[Sequence[str]],
                   tags_batch: Sequence[Sequence[int]] | None = None) -> list[list[Window]]:
        """Windows for each post (a post with no words gets one window with no labelled word)."""
        budget = self.max_length - 2
        result: list[list[Window]] = []
        for post, (words, pieces) in enumerate(zip(words_batch, self.word_pieces(words_batch))):
            pieces = [p[:budget] for p in pieces]
            layouts = [self.piece_shapes(word, p) for word, p in zip(words, pieces)]
            tags = tags_batch[post] if tags_batch is not None else None
            windows = []
            for start, end in self._spans(pieces, budget):
                ids, shape_ids, index = [self.cls_id], [0], []
                for w in range(start, end):
                    index.append(len(ids) + layouts[w][0])
                    ids.extend(pieces[w])
                    shape_ids.extend(layouts[w][1])
                ids.append(self.sep_id)
                shape_ids.append(0)
                windows.append(Window(ids, shape_ids, index, start, len(words),
                                      list(tags[start:end]) if tags is not None else None, post=post))
            result.append(windows)
        return result

    def _spans(self, pieces: list[list[int]], budget: int) -> list[tuple[int, int]]:
        n = len(pieces)
        if n == 0:
            return [(0, 0)]
        spans, start = [], 0
        while True:
            end, used = start, 0
            while end < n and used + len(pieces[end]) <= budget:
                used += len(pieces[end])
                end += 1
            spans.append((start, end))
            if end >= n:
                return spans
            back, overlap = end, 0
            while back - 1 > start and overlap + len(pieces[back - 1]) <= self.stride:
                back -= 1
                overlap += len(pieces[back])
            start = back

    # -- RE -------------------------------------------------------------------------------------------------
    def encode_re(self, words: Sequence[str], head: tuple[int, int], tail: tuple[int, int],
                  label: int | None = None, post: int = 0) -> Window:
        """One window with `[unused0] head [unused1]` and `[unused2] tail [unused3]` markers around the spans."""
        return self.encode_re_batch([(words, head, tail)], [label] if label is not None else None, post)[0]

    def encode_re_batch(self, items: Sequence[tuple[Sequence[str], tuple[int, int], tuple[int, int]]],
                        labels: Sequence[int] | None = None, first_post: int = 0) -> list[Window]:
        """Encode many (words, head span, tail span) items with one tokenizer call."""
        all_pieces = self.word_pieces([words for words, _, _ in items])
        return [self._re_window(words, pieces, head, tail, labels[k] if labels is not None else None,
                                first_post + k)
                for k, ((words, head, tail), pieces) in enumerate(zip(items, all_pieces))]

    def encode_re_pairs(self, words: Sequence[str],
                        pairs: Sequence[tuple[tuple[int, int], tuple[int, int]]]) -> list[Window]:
        """Encode many (head span, tail span) pairs of ONE post: its words are tokenised once, whatever its length."""
        pieces = self.word_pieces([words])[0]
        return [self._re_window(words, pieces, head, tail, None, k) for k, (head, tail) in enumerate(pairs)]

    def _re_window(self, words: Sequence[str], pieces: list[list[int]], head: tuple[int, int],
                   tail: tuple[int, int], label: int | None, post: int) -> Window:
        for span in (head, tail):
            if not (0 <= span[0] < span[1] <= len(words)):
                raise ValueError(f"entity span {span} is outside the {len(words)} words")
        lo, hi = self._re_word_range(pieces, head, tail)
        kept = range(lo, hi)
        budget = self.max_length - 6
        if sum(len(pieces[w]) for w in kept) > budget:  # entities far apart: first pieces only
            if hi - lo > budget:  # still too long: keep both entities and the words nearest to them
                kept = _words_near_entities(len(words), head, tail, budget)
            pieces = {w: pieces[w][:1] for w in kept}
        head_words = [w for w in kept if head[0] <= w < head[1]]
        tail_words = [w for w in kept if tail[0] <= w < tail[1]]
        ids, shape_ids = [self.cls_id], [0]
        head_index = tail_index = 0
        for w in kept:
            for marker, first in ((0, head_words[0]), (2, tail_words[0])):
                if w == first:
                    if marker == 0:
                        head_index = len(ids)
                    else:
                        tail_index = len(ids)
                    ids.append(self.marker_ids[marker])
                    shape_ids.append(0)
            ids.extend(pieces[w])
            shape_ids.extend(self.piece_shapes(words[w], pieces[w])[1])
            for marker, last in ((1, head_words[-1]), (3, tail_words[-1])):
                if w == last:
                    ids.append(self.marker_ids[marker])
                    shape_ids.append(0)
        ids, shape_ids = ids[: self.max_length - 1] + [self.sep_id], shape_ids[: self.max_length - 1] + [0]
        return Window(ids, shape_ids, labels=[label] if label is not None else None,
                      head_index=min(head_index, self.max_length - 2),
                      tail_index=min(tail_index, self.max_length - 2), post=post)

    def _re_word_range(self, pieces: list[list[int]], head: tuple[int, int], tail: tuple[int, int]) -> tuple[int, int]:
        """Largest word range around both entities that fits the window (drop words farthest from them).

        Grows outward from the entities, one word at a time on the side with fewer extra words (left first on a
        tie), while the window still fits: O(window) per pair however long the post is.
        """
        budget = self.max_length - 2 - 4
        core_lo, core_hi = min(head[0], tail[0]), max(head[1], tail[1])
        lo, hi = core_lo, core_hi
        total = sum(len(p) for p in pieces[lo:hi])
        while total <= budget and (lo > 0 or hi < len(pieces)):
            left = core_lo - lo == hi - core_hi
            if (left and lo > 0) or hi >= len(pieces):
                if total + len(pieces[lo - 1]) > budget:
                    break
                lo -= 1
                total += len(pieces[lo])
            else:
                if total + len(pieces[hi]) > budget:
                    break
                total += len(pieces[hi])
                hi += 1
        return lo, hi

    # -- tensors --------------------------------------------------------------------------------------------
    def collate(self, windows: Sequence[Window], task: str, length: int | None = None,
                words: int | None = None) -> dict[str, torch.Tensor]:
        """Pad windows into a batch dict (see docs/ARCHITECTURE.md for keys and shapes).

        `length` pads every row to that many pieces (at least the longest window); default: the longest window.
        `words` (NER) pads the word positions to that many (at least the most words of a row); default: the most.
        """
        longest = max(len(w.input_ids) for w in windows)
        if length is not None and length < longest:
            raise ValueError(f"cannot pad windows of up to {longest} pieces to {length}")
        length = length or longest
        batch = len(windows)
        input_ids = torch.full((batch, length), self.pad_id, dtype=torch.long)
        attention = torch.zeros((batch, length), dtype=torch.long)
        shapes = torch.zeros((batch, length), dtype=torch.long)
        for i, w in enumerate(windows):
            n = len(w.input_ids)
            input_ids[i, :n] = torch.tensor(w.input_ids)
            attention[i, :n] = 1
            shapes[i, :n] = torch.tensor(w.word_shape_ids)
        out = {"input_ids": input_ids, "attention_mask": attention, "word_shape_ids": shapes}
        if task == "ner":
            most = max(1, max(len(w.word_index) for w in windows))
            if words is not None and words < most:
                raise ValueError(f"cannot pad windows of up to {most} words to {words}")
            words = words or most
            index = torch.zeros((batch, words), dtype=torch.long)
            mask = torch.zeros((batch, words), dtype=torch.bool)
            labels = torch.zeros((batch, words), dtype=torch.long)
            for i, w in enumerate(windows):
                k = len(w.word_index)
                index[i, :k] = torch.tensor(w.word_index, dtype=torch.long)
                mask[i, :k] = True
                if w.labels is not None:
                    labels[i, :k] = torch.tensor(w.labels, dtype=torch.long)
            out.update(word_index=index, word_mask=mask)
            if windows[0].labels is not None:
                out["labels"] = labels
        else:
            out["head_index"] = torch.tensor([w.head_index for w in windows], dtype=torch.long)
            out["tail_index"] = torch.tensor([w.tail_index for w in windows], dtype=torch.long)
            if all(w.labels is not None for w in windows):
                out["labels"] = torch.tensor([w.labels[0] for w in windows], dtype=torch.long)
                if any(w.weight != 1.0 for w in windows):
                    out["label_weights"] = torch.tensor([w.weight for w in windows], dtype=torch.float)
        return out


def _words_near_entities(num_words: int, head: tuple[int, int], tail: tuple[int, int], budget: int) -> list[int]:
    """Indices (ascending) of at most `budget` words: both entities' words first, then the words nearest to them.

    Used when an RE item does not fit a window even at one piece per word. Entity spans longer than their share
    of the budget keep their first words, so both start markers and both end markers always fit.
    """
    spans = [range(head[0], head[1]), range(tail[0], tail[1])]
    entity_words = sorted(set(spans[0]) | set(spans[1]))
    if len(entity_words) > budget:
        share = max(1, budget // 2)
        entity_words = sorted(set(spans[0][:share]) | set(spans[1][: budget - min(share, len(spans[0]))]))
    chosen = set(entity_words)

    def distance(w: int) -> int:
        return min(abs(w - a) if w < a else max(0, w - (b - 1)) for a, b in (head, tail))

    near = range(max(0, min(head[0], tail[0]) - budget), min(num_words, max(head[1], tail[1]) + budget))
    for w in sorted((w for w in near if distance(w) <= budget), key=lambda w: (distance(w), w)):
        if len(chosen) >= budget:
            break
        chosen.add(w)
    return sorted(chosen)


def merge_window_emissions(windows: Sequence[Window], emissions: Sequence[torch.Tensor]) -> torch.Tensor:
    """Word-level emissions `(num_words, num_tags)` of one post from its windows' rows `(W_i, num_tags)`.

    Each word takes the row of the window in which it is farthest from a cut window edge (a post boundary is
    not a cut), so overlapping windows give every word its best context.
    """
    n = windows[0].num_post_words
    num_tags = emissions[0].shape[-1]
    merged = torch.zeros((n, num_tags), dtype=emissions[0].dtype)
    best = [-1.0] * n
    for window, rows in zip(windows, emissions):
        a, b = window.first_word, window.first_word + len(window.word_index)
        for i in range(a, b):
            left = float("inf") if a == 0 else i - a
            right = float("inf") if b == n else b - 1 - i
            score = min(left, right)
            if score > best[i]:
                best[i] = score
                merged[i] = rows[i - a]
    return merged
