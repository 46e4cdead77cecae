"""Writers for the two training formats, the inverses of `conll.read_conll` and `mnre.read_mnre`."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from mmib_cli.data.conll import IMGID_PREFIX, ConllSentence
from mmib_cli.data.mnre import MNREInstance

__all__ = ["conll_block", "mnre_line", "write_conll", "write_mnre"]


def conll_block(sentence: ConllSentence) -> str:
    """One tweet in the Twitter-2015/2017 layout: `IMGID:<id>` (when it has one), `word<TAB>tag` lines, a blank line.

    Whitespace inside a word is removed (the reader splits on it); an empty word becomes `_`.
    """
    lines = [f"{IMGID_PREFIX}{sentence.image_id}"] if sentence.image_id else []
    lines += [f"{''.join(word.split()) or '_'}\t{tag}" for word, tag in zip(sentence.words, sentence.tags)]
    return "\n".join(lines) + "\n\n"


def mnre_line(instance: MNREInstance) -> str:
    """One MNRE line (a Python dict literal, as `read_mnre` parses it)."""
    record = {"token": instance.words,
              "h": {"name": instance.head_name, "pos": list(instance.head)},
              "t": {"name": instance.tail_name, "pos": list(instance.tail)},
              "img_id": instance.image_id or "none.jpg", "relation": instance.relation}
    return repr(record) + "\n"


def write_conll(path: str | Path, sentences: Iterable[ConllSentence]) -> int:
    """Write sentences as a CoNLL file; returns how many."""
    blocks = [conll_block(s) for s in sentences]
    Path(path).write_text("".join(blocks), encoding="utf-8")
    return len(blocks)


def write_mnre(path: str | Path, instances: Iterable[MNREInstance]) -> int:
    """Write instances as an MNRE file; returns how many."""
    lines = [mnre_line(x) for x in instances]
    Path(path).write_text("".join(lines), encoding="utf-8")
    return len(lines)
