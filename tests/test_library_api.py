"""The library API without click: `Annotator.annotate/annotate_text/relations`, laziness, error records."""
from __future__ import annotations

import pytest


# -- library API -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def annotator(tiny_bundle):
    from mmib_cli import Annotator

    return Annotator.from_pretrained(str(tiny_bundle), device="cpu")


def test_library_api_yields_dicts_lazily(annotator, images):
    import inspect

    consumed = []

    def records():
        for i, text in enumerate(["Kawhi Leonard joins the Clippers", "Obama in Berlin", "x", "y", "z"]):
            consumed.append(i)
            yield {"id": i, "text": text, "image": str(images["red"]) if i == 0 else None}

    stream = annotator.annotate(records(), relations=True, chunk_size=2)
    assert inspect.isgenerator(stream) and consumed == []
    first = next(stream)
    assert consumed == [0, 1]  # one chunk read, not the whole input
    assert isinstance(first, dict) and first["id"] == 0 and first["image_used"] is True
    assert "relations" in first and first["model"].startswith("bundle@")
    rest = list(stream)
    assert [r["id"] for r in rest] == [1, 2, 3, 4]


def test_library_api_error_records_and_single_post(annotator):
    out = list(annotator.annotate([{"text": 5}, "not a dict", {"text": "ok"}]))
    assert [r.get("error", {}).get("type") for r in out] == ["InvalidInput", "InvalidInput", None]
    one = annotator.annotate_text("Obama visits Berlin")
    assert [t["text"] for t in one["tokens"]] == ["Obama", "visits", "Berlin"] and one["line"] == 1


def test_library_relations_default_to_the_given_pairs(annotator):
    post = {"text": "Obama met Biden", "tokens": ["Obama", "met", "Biden"], "h": {"pos": [0, 1]},
            "t": {"pos": [2, 3]}}
    from mmib_cli.annotation.annotator import RelationSettings

    [rec] = list(annotator.relations([post], relation_settings=RelationSettings(pair=False, keep_none=True)))
    assert [(r["head"]["text"], r["tail"]["text"]) for r in rec["relations"]] == [("Obama", "Biden")]
    [default] = list(annotator.relations([post]))  # default: classify the pairs the input gives
    assert all((r["head"]["text"], r["tail"]["text"]) == ("Obama", "Biden") for r in default["relations"])


def test_one_failing_post_does_not_lose_its_chunk(annotator, monkeypatch):
    """A model-stage exception caused by one post becomes that post's error record; the others are annotated."""
    from mmib_cli.annotation import forward as inference

    real = inference.WindowRunner._call

    def flaky(self, entries, length):
        if any(len(e.window.word_index) == 4 for e in entries):  # the 4-word post breaks the model
            raise RuntimeError("boom")
        return real(self, entries, length)

    monkeypatch.setattr(inference.WindowRunner, "_call", flaky)
    out = list(annotator.annotate([{"text": "one"}, {"text": "a b c d"}, {"text": "two words"}]))
    assert out[0]["tokens"][0]["text"] == "one" and out[2]["bio"] and len(out[2]["bio"]) == 2
    assert out[1]["error"]["type"] == "AnnotationFailed" and "boom" in out[1]["error"]["message"]


def test_odd_image_paths_never_stop_a_run(annotator):
    out = list(annotator.annotate([{"text": "hi", "image": "~no_such_user_xyz/p.jpg"},
                                   {"text": "hi", "image": "a\x00b.jpg"},
                                   {"text": "hi", "image": "https://example.com/p.jpg"}]))
    assert [r["image_used"] for r in out] == [False, False, False]
    assert out[2]["image_error"].startswith("ImageNotFound")
