"""Out-of-domain checks of issue 17 (numbers for models/RESULTS.md); run from the repository root.

    python scripts/wild_eval.py ner --model models/mmib-default/ner --data ../shared/data/wnut17/dev.conll
    python scripts/wild_eval.py re --model models/mmib-default/re --data ../shared/data/mnre/test.txt

`ner`: entity P/R/F1 with all four types (WNUT-17 types mapped as `mmib_cli.data.conll.WNUT17_TYPES`) and with
PER/LOC/ORG only (MISC removed from gold and predictions, as the issue's comparison), per type, and the recall of
hashtag entities (an entity that is a `#word` token or right after a `#` token). `--hashtags` rewrites the
hashtags first, as other upstream tokenizers give them: `joined` merges `#` + word into one token, `split` cuts
`#word` into `#` + `word` (tag on the word), `lowercase` lowercases every hashtag (`#darwin`); `given` (default)
keeps the file's tokens. `--lowercase` lowercases every word first (posts written without capitals).
`hashtags`: the recall of hashtag entities (PER/LOC/ORG) in each form of `--hashtags`, on the posts that hold a
hashtag (Twitter-2015 test writes hashtags whole: `#Blackhawks`).
`re`: every annotated asymmetric pair between entities of one type read backwards (`mnre.reversed_pairs`, gold
None): the share that still gets the forward label, and the share that gets any relation; then both directions
scored together and decoded as `annotate --relations` does (`postprocess.relations_from_scores`, the model's
temperature and default minimum score): the share emitted forwards (right), backwards (wrong) or not at all.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import replace

from mmib_cli.checkpoint.assemble import load_model
from mmib_cli.data.conll import ConllSentence, entity_spans, read_conll
from mmib_cli.workflows.metrics import ner_scores
from mmib_cli.annotation.postprocess import default_min_score, relation_signature, relations_from_scores


def _join_hashtags(sentence: ConllSentence) -> ConllSentence:
    words, tags = [], []
    for word, tag in zip(sentence.words, sentence.tags):
        if words and words[-1] == "#" and tags[-1] == "O" and word[:1].isalnum():
            words[-1], tags[-1] = "#" + word, tag
            continue
        words.append(word)
        tags.append(tag)
    return ConllSentence(words, tags, sentence.image_id, sentence.line)


def _split_hashtags(sentence: ConllSentence) -> ConllSentence:
    words, tags = [], []
    for word, tag in zip(sentence.words, sentence.tags):
        if word.startswith("#") and word[1:2].isalnum():
            words += ["#", word[1:]]
            tags += ["O" if not tag.startswith("I-") else tag, tag]
            continue
        words.append(word)
        tags.append(tag)
    return ConllSentence(words, tags, sentence.image_id, sentence.line)


def _lowercase_hashtags(sentence: ConllSentence) -> ConllSentence:
    words = sentence.words
    return replace(sentence, words=[w.lower() if w.startswith("#") or (i and words[i - 1] == "#") else w
                                    for i, w in enumerate(words)])


HASHTAG_FORMS = {"given": lambda s: s, "joined": _join_hashtags, "split": _split_hashtags,
                 "lowercase": _lowercase_hashtags}


def _without_misc(tags: Sequence[str]) -> list[str]:
    return ["O" if t.endswith("MISC") else t for t in tags]


def _hashtag_recall(sentences: Sequence[ConllSentence], predicted: Sequence[Sequence[str]]) -> dict:
    found = total = 0
    for sentence, pred in zip(sentences, predicted):
        guessed = set(entity_spans(_without_misc(pred)))
        for span in entity_spans(_without_misc(sentence.tags)):
            start = span[1]
            if sentence.words[start].startswith("#") or (start and sentence.words[start - 1] == "#"):
                total += 1
                found += span in guessed
    return {"hashtag_entities": total, "recall": round(100.0 * found / max(1, total), 2)}


def evaluate_ner(model: str, data: str, hashtags: str = "given", lowercase: bool = False) -> dict:
    from mmib_cli.annotation.forward import predict_ner

    loaded = load_model(model)
    sentences = [HASHTAG_FORMS[hashtags](s) for s in read_conll(data)]
    if lowercase:
        sentences = [replace(s, words=[w.lower() for w in s.words]) for s in sentences]
    windows = loaded.featurizer.encode_ner([s.words for s in sentences])
    predicted = [p.tags for p in predict_ner(loaded, windows)]
    gold = [s.tags for s in sentences]
    four = ner_scores(gold, predicted)
    three = ner_scores([_without_misc(g) for g in gold], [_without_misc(p) for p in predicted])
    summary = {name: {k: m[k] for k in ("precision", "recall", "f1")} for name, m in (("all4", four), ("per_loc_org", three))}
    summary["per_type_f1"] = {t: row["f1"] for t, row in three["per_type"].items()}
    summary["MISC_f1"] = four["per_type"].get("MISC", {}).get("f1")
    summary["hashtags"] = _hashtag_recall(sentences, predicted)
    return summary


def evaluate_hashtags(model: str, data: str) -> dict:
    from mmib_cli.annotation.forward import predict_ner

    loaded = load_model(model)
    posts = [s for s in read_conll(data) if any(w.startswith("#") for w in s.words)]
    result = {}
    for form, rewrite in HASHTAG_FORMS.items():
        sentences = [rewrite(s) for s in posts]
        windows = loaded.featurizer.encode_ner([s.words for s in sentences])
        result[form] = _hashtag_recall(sentences, [p.tags for p in predict_ner(loaded, windows)])
    return {"posts": len(posts), **result}


def _pair_entities(instance) -> list[dict]:
    """Head and tail of an MNRE instance as entities of its space-joined text, typed by the relation's signature."""
    starts, offset = [], 0
    for word in instance.words:
        starts.append(offset)
        offset += len(word) + 1
    types = relation_signature(instance.relation) or ("MISC", "MISC")
    return [{"text": name, "label": label, "start": starts[a], "end": starts[b - 1] + len(instance.words[b - 1])}
            for name, label, (a, b) in ((instance.head_name, types[0], instance.head),
                                        (instance.tail_name, types[1], instance.tail))]


def evaluate_reversed(model: str, data: str) -> dict:
    from mmib_cli.data.mnre import read_mnre, reversed_pairs
    from mmib_cli.annotation.forward import predict_re

    loaded = load_model(model)
    config = loaded.model.config
    labels = config.labels
    instances = read_mnre(data)
    pairs = [(f, b) for f in instances if f.relation != "None" for b in reversed_pairs([f]) if b.relation == "None"]
    encode = loaded.featurizer.encode_re_batch
    backward = predict_re(loaded, encode([(b.words, b.head, b.tail) for _, b in pairs]))
    forward = predict_re(loaded, encode([(f.words, f.head, f.tail) for f, _ in pairs]))
    predicted = [labels[i] for i in backward.argmax(-1).tolist()]
    same = sum(p == f.relation for (f, _), p in zip(pairs, predicted))
    related = sum(p != "None" for p in predicted)
    # what `annotate --relations` / `relations --pair` emit when both directions are scored (postprocess rules)
    min_score = default_min_score(config)
    outcome = {"forward": 0, "backward": 0, "none": 0}
    for (f, _), p_forward, p_backward in zip(pairs, forward.tolist(), backward.tolist()):
        head, tail = _pair_entities(f)
        records = relations_from_scores([head, tail], [(0, 1), (1, 0)], [p_forward, p_backward], labels,
                                        temperature=config.relation_temperature, min_score=min_score)
        backwards = any(r["head"]["start"] == tail["start"] for r in records)
        outcome["backward" if backwards else "forward" if records else "none"] += 1
    share = {k: round(100.0 * v / max(1, len(pairs)), 2) for k, v in outcome.items()}
    return {"reversed_asymmetric_pairs": len(pairs), "forward_label_share": round(100.0 * same / max(1, len(pairs)), 2),
            "any_relation_share": round(100.0 * related / max(1, len(pairs)), 2),
            "decoded_both_directions": {"min_score": min_score, "emitted_forward": share["forward"],
                                        "emitted_backward": share["backward"], "emitted_none": share["none"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=["ner", "hashtags", "re"])
    parser.add_argument("--model", required=True, help="single-task checkpoint directory")
    parser.add_argument("--data", required=True)
    parser.add_argument("--hashtags", choices=list(HASHTAG_FORMS), default="given")
    parser.add_argument("--lowercase", action="store_true", help="(ner) lowercase every word first")
    args = parser.parse_args()
    if args.task == "ner":
        result = evaluate_ner(args.model, args.data, args.hashtags, args.lowercase)
    elif args.task == "hashtags":
        result = evaluate_hashtags(args.model, args.data)
    else:
        result = evaluate_reversed(args.model, args.data)
    print(json.dumps({"arguments": vars(args), **result}, indent=2))  # arguments apart: "hashtags" is also a result


if __name__ == "__main__":
    main()
