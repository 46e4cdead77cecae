"""Training-time copies of NER sentences: lowercased (Mayhew et al., 2019) and with swapped mentions (Dai & Adel, 2020).

Both keep the sentence count of a copy equal to the original's, so a run with one of them takes the same number of
steps as a run on the same sentences twice (the control the results compare against).
"""
from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import replace
from typing import Sequence

from mmib_cli.data.conll import ConllSentence, entity_spans


def lowercased(sentences: Sequence[ConllSentence]) -> list[ConllSentence]:
    """A copy of every sentence with its words lowercased and its tags unchanged.

    The uncased encoders see case only through the word shapes, so these copies teach the model to find entities
    written without capitals (`newsradio`, `#darwin`).
    """
    return [replace(s, words=[w.lower() for w in s.words]) for s in sentences]


def mention_swapped(sentences: Sequence[ConllSentence], *, seed: int) -> list[ConllSentence]:
    """A copy of every sentence in which each entity mention is replaced by a random mention of the same type.

    The mentions are drawn (seeded, reproducible) from all of `sentences`, so a name seen in one corpus also appears
    in the contexts of the others, and the model has to rely on the context more than on having seen the name
    ("mention replacement", Dai & Adel, 2020). The replacement's length sets the copy's tags (`B-X I-X ...`);
    words outside entities and sentences without entities are copied unchanged.
    """
    pool: dict[str, list[list[str]]] = defaultdict(list)
    for sentence in sentences:
        for kind, begin, end in entity_spans(sentence.tags):
            pool[kind].append(sentence.words[begin:end])
    rng = random.Random(seed)
    copies = []
    for sentence in sentences:
        words: list[str] = []
        tags: list[str] = []
        last = 0
        for kind, begin, end in entity_spans(sentence.tags):
            words += sentence.words[last:begin]
            tags += sentence.tags[last:begin]
            mention = rng.choice(pool[kind])
            words += mention
            tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(mention) - 1)
            last = end
        words += sentence.words[last:]
        tags += sentence.tags[last:]
        copies.append(replace(sentence, words=words, tags=tags))
    return copies
