"""Subprocess probe of tests/test_batch_invariance.py: raw-float reproducibility under this process's kernels.

Run as `python reproducibility_probe.py MODEL SEED SIZE [THREADS ...]` (SIZE: `small` or `full` post sets) with the instruction-set caps under test set in the
environment (`ATEN_CPU_CAPABILITY`, `MKL_ENABLE_INSTRUCTIONS`, `ONEDNN_MAX_CPU_ISA`). For each thread count, every
post's raw NER emissions and relation probabilities are computed alone and inside random mixes of the other posts
(random orders, chunk splits and call mates); they must be bit-identical. Prints one JSON line:
`{"threads": {"1": DIGEST, ...}, "capability": ..., "checked": N}`, or exits 1 naming the first difference.
"""
from __future__ import annotations

import hashlib
import json
import random
import sys

import torch

from call_shapes import raw_bytes

WORDS = ("Obama", "visits", "Berlin", "with", "Merkel", "and", "the", "Apple", "team", "in", "New", "York", "@nba",
         "#LA", "LeBron", "James", "joins", "Lakers", "today", "!", "Paris", "Hilton", "at", "Google", "ó", "😀")


def posts(seed: int, max_length: int, size: str) -> list[list[str]]:
    """Word lists of random lengths: short, near a bucket edge, several windows long."""
    rng = random.Random(seed)
    if size == "small":
        lengths = [1, 5, 14, 27, max_length // 3, max_length + 5] + [rng.randint(1, max_length // 2) for _ in range(4)]
    else:
        lengths = [1, 2, 5, 9, 14, 20, 27, 33, max_length // 2, max_length, 2 * max_length]
        lengths += [rng.randint(1, 3 * max_length) for _ in range(9)]
    return [[rng.choice(WORDS) for _ in range(n)] for n in lengths]


def ner_rows(loaded, word_lists) -> list[bytes]:
    from mmib_cli.annotation.forward import predict_ner

    windows = loaded.featurizer.encode_ner(word_lists)
    rows = predict_ner(loaded, windows)
    return [json.dumps([p.tags, p.tag_scores]).encode() for p in rows]


def emission_rows(loaded, word_lists) -> list[bytes]:
    """Raw emissions of every window of every post (the floats before the CRF)."""
    from mmib_cli.annotation.forward import WindowRunner

    runner = WindowRunner(loaded.model, loaded.featurizer, "ner")
    encoded = loaded.featurizer.encode_ner(word_lists)
    out: list[list[bytes]] = [[b""] * len(windows) for windows in encoded]
    for k, windows in enumerate(encoded):
        for j, window in enumerate(windows):
            runner.add(window, lambda rows, k=k, j=j: out[k].__setitem__(j, raw_bytes(rows)))
    runner.flush()
    return [b"".join(rows) for rows in out]


def relation_rows(loaded, word_lists) -> list[bytes]:
    from mmib_cli.annotation.forward import predict_re

    items, owners = [], []
    for k, words in enumerate(word_lists):
        n = len(words)
        for head, tail in ((0, n - 1), (n - 1, 0), (n // 2, 0)):
            if head != tail:
                items.append((words, (head, head + 1), (tail, tail + 1)))
                owners.append(k)
    probs = predict_re(loaded, loaded.featurizer.encode_re_batch(items))
    out = [b""] * len(word_lists)
    for k, row in zip(owners, probs):
        out[k] += raw_bytes(row)
    return out


def check(annotator, seed: int, size: str) -> tuple[str, int]:
    """Every post alone == the same post in random mixes; returns a digest of all the raw results."""
    rng = random.Random(seed)
    digest, checked = hashlib.sha256(), 0
    for task, compute in (("ner", emission_rows), ("ner", ner_rows), ("re", relation_rows)):
        loaded = getattr(annotator, task)
        if loaded is None:
            continue
        word_lists = posts(seed, loaded.featurizer.max_length, size)
        alone = [compute(loaded, [words])[0] for words in word_lists]
        for trial in range(2 if size == "small" else 3):
            order = rng.sample(range(len(word_lists)), rng.randint(2, len(word_lists)))
            got = compute(loaded, [word_lists[i] for i in order])
            for i, result in zip(order, got):
                if result != alone[i]:
                    sys.exit(f"{compute.__name__}: post {i} ({len(word_lists[i])} words) differs in mix {trial} "
                             f"(seed {seed})")
                checked += 1
        for result in alone:
            digest.update(result)
    return digest.hexdigest(), checked


def main() -> None:
    model, seed, size, *threads = sys.argv[1:]
    from mmib_cli.annotation.annotator import Annotator

    annotator = Annotator.from_pretrained(model, device="cpu")
    result: dict = {"threads": {}, "capability": torch.backends.cpu.get_cpu_capability(), "checked": 0}
    for count in threads or ["1"]:
        torch.set_num_threads(int(count))
        digest, checked = check(annotator, int(seed), size)
        result["threads"][count] = digest
        result["checked"] += checked
    print(json.dumps(result))


if __name__ == "__main__":
    main()
