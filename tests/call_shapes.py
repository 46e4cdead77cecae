"""Records the shape of every call into a loaded model and checks that each one depends only on what it computes.

Used by tests/test_call_shapes.py and tests/reproducibility_probe.py. The hooks sit on the model's own modules
(text encoder, image backbone, classifier) and on its CRF decode, not on mmib's batching code, so a code path that
bypasses the fixed-shape runner is caught too.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch


@dataclass
class Call:
    """One call into a model part: its input shape and, per row, the length of what that row computes."""

    part: str  # "text", "image", "classifier" or "crf"
    task: str  # "ner" or "re"
    shape: tuple[int, ...]
    lengths: list[int] = field(default_factory=list)  # text: pieces per row; crf: words per row


@contextmanager
def recorded_calls(annotator: Any) -> Iterator[list[Call]]:
    """Record every call into the annotator's models while the block runs."""
    calls: list[Call] = []
    handles = []
    restore = []
    for task in ("ner", "re"):
        loaded = getattr(annotator, task)
        if loaded is None:
            continue
        model = loaded.model

        def text_hook(module, args, kwargs, task=task):
            ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
            calls.append(Call("text", task, tuple(ids.shape), mask.sum(dim=1).tolist()))

        handles.append(model.text_encoder.register_forward_pre_hook(text_hook, with_kwargs=True))
        handles.append(model.classifier.register_forward_pre_hook(
            lambda module, args, task=task: calls.append(Call("classifier", task, tuple(args[0].shape)))))
        if getattr(model, "image_backbone", None) is not None:
            handles.append(model.image_backbone.register_forward_pre_hook(
                lambda module, args, task=task: calls.append(Call("image", task, tuple(args[0].shape)))))
        if task == "ner":
            real = model.decode

            def decode(emissions, word_mask, real=real):
                calls.append(Call("crf", "ner", tuple(emissions.shape), word_mask.sum(dim=1).tolist()))
                return real(emissions, word_mask)

            model.decode = decode
            restore.append(model)
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()
        for model in restore:
            del model.decode


def shape_violations(calls: list[Call], annotator: Any) -> list[str]:
    """Every call whose shape is not a function of each row it computes (empty when the design holds)."""
    from mmib_cli.annotation.forward import CRF_ROWS, IMAGE_BATCH, bucket_length, rows_per_call, word_bucket

    problems = []
    last_text: dict[str, tuple[int, ...]] = {}  # the latest text call of each task
    for call in calls:
        if call.part == "text":
            max_length = getattr(annotator, call.task).featurizer.max_length
            count, length = call.shape
            last_text[call.task] = call.shape
            rows = rows_per_call(annotator.device, length)
            if count != rows:
                problems.append(f"{call.task} text call of {count} rows, not {rows}")
            for n in call.lengths:
                if n > 2 and bucket_length(n, max_length) != length:  # 2 pieces: an empty row ([CLS] [SEP])
                    problems.append(f"{call.task} window of {n} pieces in a call padded to {length}")
        elif call.part == "image" and call.shape[0] != IMAGE_BATCH:
            problems.append(f"{call.task} image call of {call.shape[0]} photos, not {IMAGE_BATCH}")
        elif call.part == "crf":
            count, words = call.shape[:2]
            if count != CRF_ROWS:
                problems.append(f"CRF call of {count} posts, not {CRF_ROWS}")
            for n in call.lengths:
                if n > 1 and word_bucket(n) != words:  # 1 word: an empty row, or a one-word post (bucket 8)
                    problems.append(f"a post of {n} words in a CRF call padded to {words}")
        elif call.part == "classifier":  # inside its text call: the same rows (NER: words padded to the length)
            text = last_text.get(call.task)
            if text is None or call.shape[0] != text[0] or (call.task == "ner" and call.shape[1] != text[1]):
                problems.append(f"{call.task} classifier call of shape {call.shape} in a text call of {text}")
    return problems


def windows_ran(calls: list[Call]) -> int:
    """Rows that computed a real window (more than the two pieces of an empty row)."""
    return sum(n > 2 for call in calls if call.part == "text" for n in call.lengths)


def raw_bytes(tensor: torch.Tensor) -> bytes:
    """Every bit of a float tensor."""
    return tensor.detach().contiguous().cpu().numpy().tobytes()
