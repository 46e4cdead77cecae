"""`mnre.reversed_pairs`: reversed asymmetric pairs become None, symmetric ones keep their label."""
from __future__ import annotations

from pathlib import Path

import pytest

import conftest
from mmib_cli.data.mnre import MNREInstance, is_symmetric, read_mnre, reversed_pairs
from mmib_cli.model.configuration import RE_LABELS

WORDS = ["Paris", "is", "in", "France", "says", "Obama", "to", "Biden"]


def _pair(head: tuple[int, int], tail: tuple[int, int], relation: str, words: list[str] = WORDS) -> MNREInstance:
    return MNREInstance(words, head, tail, " ".join(words[slice(*head)]), " ".join(words[slice(*tail)]),
                        "x.jpg", relation, 1)


def test_asymmetric_reversed_is_none_and_symmetric_keeps_its_label():
    contain = _pair((3, 4), (0, 1), "/loc/loc/contain")
    peer = _pair((5, 6), (7, 8), "/per/per/peer")
    out = reversed_pairs([contain, peer])
    assert [(x.head, x.tail, x.relation) for x in out] == [((0, 1), (3, 4), "None"), ((7, 8), (5, 6), "/per/per/peer")]
    assert out[0].head_name == "Paris" and out[0].tail_name == "France"


def test_typed_and_none_pairs_are_not_reversed():
    typed = _pair((5, 6), (0, 1), "/per/loc/place_of_residence")
    none = _pair((5, 6), (3, 4), "None")
    assert reversed_pairs([typed, none]) == []


def test_an_annotated_reverse_wins():
    forward = _pair((3, 4), (0, 1), "/loc/loc/contain")
    backward = _pair((0, 1), (3, 4), "None")
    assert reversed_pairs([forward, backward]) == []


def test_symmetry_of_every_label():
    symmetric = {label for label in RE_LABELS if is_symmetric(label)}
    assert symmetric == {"None", "/per/per/siblings", "/per/per/couple", "/per/per/neighbor", "/per/per/peer",
                         "/per/per/alumi", "/per/per/alternate_names", "/org/org/alternate_names"}


def test_read_examples_appends_the_reversed_pairs(tmp_path, tiny_bert_dir):
    from transformers import AutoTokenizer

    from mmib_cli.data.datasets import read_examples
    from mmib_cli.features import PUNCT_MARKERS, Featurizer

    path = tmp_path / "re.txt"
    rows = [{"token": WORDS, "h": {"name": "France", "pos": [3, 4]}, "t": {"name": "Paris", "pos": [0, 1]},
             "img_id": "a.jpg", "relation": "/loc/loc/contain"}]
    path.write_text("\n".join(repr(r) for r in rows) + "\n", encoding="utf-8")
    featurizer = Featurizer(AutoTokenizer.from_pretrained(str(tiny_bert_dir)), markers=PUNCT_MARKERS)
    plain = read_examples("re", [path], featurizer, RE_LABELS)
    both = read_examples("re", [path], featurizer, RE_LABELS, reverse_pairs=True)
    assert plain.gold == ["/loc/loc/contain"] and both.gold == ["/loc/loc/contain", "None"]
    assert both.windows[1].labels == [0] and both.windows[1].head_index != both.windows[0].head_index
    assert [w.weight for w in both.windows] == [1.0, 1.0] and "label_weights" not in featurizer.collate(
        both.windows, "re")
    gentle = read_examples("re", [path], featurizer, RE_LABELS, reverse_pairs=True, reverse_pairs_weight=0.25)
    assert [w.weight for w in gentle.windows] == [1.0, 0.25]  # only the reversed pair that became None
    assert featurizer.collate(gentle.windows, "re")["label_weights"].tolist() == [1.0, 0.25]


def test_reverse_pairs_weight_needs_reverse_pairs():
    from mmib_cli.errors import UsageError
    from mmib_cli.workflows.train import TrainOptions

    with pytest.raises(UsageError, match="--reverse-pairs-weight"):
        TrainOptions(task="re", train_files=["t"], valid_files=["v"], output="o", reverse_pairs_weight=0.5)
    assert TrainOptions(task="re", train_files=["t"], valid_files=["v"], output="o", reverse_pairs=True,
                        reverse_pairs_weight=0.5).reverse_pairs_weight == 0.5


@pytest.mark.shared_data
def test_mnre_train_reversed_pairs():
    instances = read_mnre(Path(conftest.SHARED_DATA) / "mnre" / "train.txt")
    out = reversed_pairs(instances)
    assert sum(x.relation == "None" for x in out) == 900  # parent, charges, subsidiary, contain, part_of
    assert len(out) == 2229
