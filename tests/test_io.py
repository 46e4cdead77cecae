"""Input records, JSONL reading/writing (atomic, resumable) and the output JSON Schema."""
from __future__ import annotations

import bz2
import gzip
import io
import itertools
import json
import lzma
import os
import sys
import threading
from pathlib import Path

import jsonschema
import pytest

from mmib_cli.errors import ExitCode, InputUnreadable, InvalidInput, MMIBError, OutputExists
from mmib_cli.io.jsonl import dumps_line, is_stream_input, read_lines
from mmib_cli.io.writer import AtomicJSONLWriter, partial_path
from mmib_cli.io.records import (
    ErrorRecord,
    InputError,
    InputPost,
    SkippedRecord,
    make_output,
    output_schema,
    parse_post,
    post_id,
)

# ----------------------------------------------------------------------------------------------------- records


def test_parse_post_minimal_defaults_id_to_line():
    post = parse_post({"text": "Kawhi visits Toronto"}, 7)
    assert post == InputPost(line=7, id=7, text="Kawhi visits Toronto", image=None, tokens=None,
                             raw={"text": "Kawhi visits Toronto"})


@pytest.mark.parametrize("raw_id", ["tw-1", 12, 0])
def test_parse_post_keeps_string_and_int_ids(raw_id):
    assert parse_post({"id": raw_id, "text": "x"}, 1).id == raw_id


def test_parse_post_empty_text_is_valid():
    post = parse_post({"id": "a", "text": "", "image": "a.jpg"}, 2)
    assert post.text == "" and post.image == "a.jpg"


def test_parse_post_custom_field_names():
    obj = {"tweet_id": "t9", "body": "hello", "img": "p.png"}
    post = parse_post(obj, 3, id_field="tweet_id", text_field="body", image_field="img")
    assert (post.id, post.text, post.image, post.raw) == ("t9", "hello", "p.png", obj)


@pytest.mark.parametrize("image", [None, ""])
def test_parse_post_null_or_empty_image_means_none(image):
    assert parse_post({"text": "x", "image": image}, 1).image is None


def test_parse_post_tokens():
    assert parse_post({"text": "a b", "tokens": ["a", "b"]}, 1).tokens == ["a", "b"]


@pytest.mark.parametrize(
    ("obj", "fragment"),
    [
        ([1, 2], "expected a JSON object"),
        ("text", "expected a JSON object"),
        (None, "got null"),
        ({"id": 1}, 'missing the "text" field'),
        ({"text": None}, '"text" must be a string, got null'),
        ({"text": 42}, '"text" must be a string, got a number (42)'),
        ({"text": ["a"]}, '"text" must be a string, got an array'),
        ({"text": "x", "image": 3}, '"image" must be a path string or null'),
        ({"text": "x", "image": {"path": "a"}}, '"image" must be a path string or null'),
        ({"text": "x", "id": True}, '"id" must be a string or an integer'),
        ({"text": "x", "id": 1.5}, '"id" must be a string or an integer'),
        ({"text": "x", "tokens": "a b"}, '"tokens" must be a list of words'),
        ({"text": "x", "tokens": ["a", ""]}, '"tokens"[1] must be a non-empty string'),
        ({"text": "x", "tokens": ["a", "  "]}, '"tokens"[1] must be a non-empty string'),
        ({"text": "x", "tokens": ["a", 3]}, '"tokens"[1] must be a non-empty string'),
    ],
)
def test_parse_post_rejects_invalid_records(obj, fragment):
    with pytest.raises(InvalidInput) as info:
        parse_post(obj, 5)
    assert fragment in str(info.value)
    assert str(info.value).startswith("line 5: ")
    assert info.value.error_type == "InvalidInput"


def test_parse_post_long_values_are_truncated_in_messages():
    with pytest.raises(InputError) as info:
        parse_post({"text": ["x" * 500]}, 1)
    assert len(str(info.value)) < 200 and "..." in str(info.value)


def test_post_id_never_raises():
    assert post_id({"id": "a"}, 3) == "a"
    assert post_id({"id": 4}, 3) == 4
    assert post_id({"id": True}, 3) == 3
    assert post_id({"id": [1]}, 3) == 3
    assert post_id([1], 3) == 3
    assert post_id({"key": "k"}, 3, id_field="key") == "k"


def test_error_record_to_json():
    record = ErrorRecord(id="a", line=4, error_type="InvalidJSON", message="line 4: bad")
    assert record.to_json() == {"id": "a", "line": 4, "error": {"type": "InvalidJSON", "message": "line 4: bad"}}
    assert list(record.to_json()) == ["id", "line", "error"]


def test_error_record_from_exception():
    assert ErrorRecord.from_exception(InputError("bad", error_type="ImageNotFound"), id=1, line=1).error_type == (
        "ImageNotFound"
    )
    rec = ErrorRecord.from_exception(ValueError("boom"), id="x", line=2)
    assert (rec.error_type, rec.message) == ("ValueError", "boom")
    assert ErrorRecord.from_exception(RuntimeError(), id=1, line=1).message == "RuntimeError"


def _annotated(post: InputPost, **extra) -> dict:
    tokens = [{"text": "Kawhi", "start": 0, "end": 5}, {"text": "Leonard", "start": 6, "end": 13}]
    entity = {"text": "Kawhi Leonard", "label": "PER", "start": 0, "end": 13, "score": 0.98}
    return make_output(post, tokens=tokens, bio=["B-PER", "I-PER"], entities=[entity], image_used=False,
                       model="mmib-default@0.1.0", **extra)


def test_make_output_key_order_and_passthrough():
    raw = {"image": "a.jpg", "text": "Kawhi Leonard", "id": "p1", "tokens": ["Kawhi", "Leonard"], "lang": "en",
           "error": "not ours", "line": 99}
    out = _annotated(parse_post(raw, 3))
    assert list(out) == ["id", "line", "text", "image", "lang", "tokens", "bio", "entities", "image_used", "model"]
    assert out["line"] == 3 and out["id"] == "p1"
    assert out["tokens"][1] == {"text": "Leonard", "start": 6, "end": 13}
    assert "relations" not in out


def test_make_output_accepts_token_objects_and_relations():
    from collections import namedtuple

    Tok = namedtuple("Tok", "text start end")
    post = parse_post({"text": "Kawhi Leonard"}, 1)
    out = make_output(post, tokens=[Tok("Kawhi", 0, 5), Tok("Leonard", 6, 13)], bio=["O", "O"], entities=[],
                      relations=[], image_used=True, model="m@1")
    assert out["tokens"][0] == {"text": "Kawhi", "start": 0, "end": 5}
    assert out["relations"] == [] and out["image_used"] is True


def test_make_output_rejects_tag_count_mismatch():
    with pytest.raises(ValueError, match="1 BIO tags for 0 tokens"):
        make_output(parse_post({"text": ""}, 1), tokens=[], bio=["O"], entities=[], image_used=False, model="m@1")


# ------------------------------------------------------------------------------------------------------ schema


@pytest.fixture(scope="module")
def validator():
    schema = output_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_output_schema_is_draft_2020_12_and_a_copy():
    schema = output_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    schema["oneOf"].clear()
    assert output_schema()["oneOf"]


def test_schema_accepts_annotated_post_and_error_record(validator):
    post = parse_post({"id": 1, "text": "Kawhi Leonard", "extra": {"any": ["thing"]}}, 1)
    entity = {"text": "Kawhi Leonard", "label": "PER", "start": 0, "end": 13, "score": 0.98}
    tail = {"text": "Leonard", "label": "PER", "start": 6, "end": 13, "score": 0.5}
    relation = {"head": entity, "tail": tail, "relation": "/per/per/alternate_names", "score": 0.91}
    validator.validate(_annotated(post))
    validator.validate(_annotated(post, relations=[relation]))
    validator.validate(ErrorRecord(id="x", line=2, error_type="InvalidJSON", message="line 2: bad").to_json())
    validator.validate(ErrorRecord(id=2, line=2, error_type="ImageNotFound", message="m").to_json())
    passthrough = {"text": "t", "tokens": ["t"], **ErrorRecord(id=3, line=3, error_type="X", message="m").to_json()}
    validator.validate(passthrough)  # input fields may pass through into error records too


@pytest.mark.parametrize(
    "mutate",
    [
        lambda r: r.pop("model"),
        lambda r: r.update(model="no-revision"),
        lambda r: r.update(line=0),
        lambda r: r.update(id=None),
        lambda r: r.update(image_used="no"),
        lambda r: r.update(bio=["B_PER", "O"]),
        lambda r: r["entities"][0].update(score=1.5),
        lambda r: r["entities"][0].update(extra=1),
        lambda r: r["entities"][0].pop("label"),
        lambda r: r["tokens"][0].update(start=-1),
        lambda r: r.update(relations=[{"head": {}, "tail": {}, "relation": "x", "score": 0.5}]),
        lambda r: r.update(error={"type": "X", "message": "m"}),
    ],
)
def test_schema_rejects_malformed_posts(validator, mutate):
    record = _annotated(parse_post({"id": 1, "text": "Kawhi Leonard"}, 1))
    mutate(record)
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(record)


@pytest.mark.parametrize(
    "record",
    [
        {"id": 1, "line": 1, "error": {"type": "InvalidJSON"}},
        {"id": 1, "line": 1, "error": {"type": "bad type", "message": "m"}},
        {"id": 1, "error": {"type": "X", "message": "m"}},
        {"line": 1, "error": {"type": "X", "message": "m"}},
    ],
)
def test_schema_rejects_malformed_error_records(validator, record):
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(record)


# ---------------------------------------------------------------------------------------------------- reading


def test_read_lines_numbers_physical_lines_and_turns_bad_lines_into_errors(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(
        b'\xef\xbb\xbf{"id": "a", "text": "first"}\n'  # 1, with a BOM
        b"\n"  # 2 blank
        b"   \t \r\n"  # 3 whitespace only
        b'{"text": "crlf"}\r\n'  # 4
        b"{bad json\n"  # 5
        b'{"text": "caf\xe9"}\n'  # 6 latin-1, invalid UTF-8
        b"[1, 2]\n"  # 7
        b"null\n"  # 8
        b'"just a string"\n'  # 9
        b'{"text": "no newline at end"}'  # 10
    )
    items = list(read_lines(path))
    assert [n for n, _ in items] == list(range(1, 11))  # one item per physical line
    values = dict(items)
    assert values[2] == SkippedRecord(2, 2, "blank line") and values[3] == SkippedRecord(3, 3, "blank line")
    assert values[1] == {"id": "a", "text": "first"}
    assert values[4] == {"text": "crlf"}
    assert values[10] == {"text": "no newline at end"}
    expected = {5: "InvalidJSON", 6: "InvalidJSON", 7: "InvalidInput", 8: "InvalidInput", 9: "InvalidInput"}
    for number, error_type in expected.items():
        record = values[number]
        assert isinstance(record, ErrorRecord)
        assert (record.id, record.line, record.error_type) == (number, number, error_type)
        assert record.message.startswith(f"line {number}: ")
    assert "invalid json" in values[5].message and "'{bad json'" in values[5].message
    assert "utf-8" in values[6].message
    assert "got list" in values[7].message


def test_read_lines_from_stdin_and_streams(monkeypatch):
    data = b'{"text": "a"}\n\n{"text": "b"}\n'
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
    assert list(read_lines("-")) == [(1, {"text": "a"}), (2, SkippedRecord(2, 2, "blank line")), (3, {"text": "b"})]
    stream = io.BytesIO(data)
    assert [n for n, _ in read_lines(stream)] == [1, 2, 3]
    assert not stream.closed  # a stream passed in is left open
    assert list(read_lines(io.StringIO('{"text": "é"}\n'))) == [(1, {"text": "é"})]


def test_read_lines_over_long_line_becomes_error_and_reading_goes_on():
    data = b'{"text": "' + b"x" * 5000 + b'"}\n{"text": "ok"}\n' + b"y" * 3000
    items = list(read_lines(io.BytesIO(data), max_line_bytes=1000))
    assert [n for n, _ in items] == [1, 2, 3]
    assert items[0][1].error_type == "InvalidInput" and "longer than 1000 bytes" in items[0][1].message
    assert items[1][1] == {"text": "ok"}
    assert items[2][1].error_type == "InvalidInput"


class _EndlessStream(io.RawIOBase):
    """A stream that never ends: reading it whole would never return."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def readable(self) -> bool:
        return True

    def readline(self, size: int = -1) -> bytes:
        self.reads += 1
        return b'{"text": "again"}\n'


def test_read_lines_is_lazy_streaming():
    stream = _EndlessStream()
    first = list(itertools.islice(read_lines(stream), 3))
    assert [n for n, _ in first] == [1, 2, 3]
    assert stream.reads == 3


def test_read_lines_missing_file_raises_on_first_next(tmp_path):
    reader = read_lines(tmp_path / "nope.jsonl")
    with pytest.raises(FileNotFoundError):
        next(reader)


def test_read_lines_non_finite_numbers_become_null():
    data = b'{"a": NaN, "b": [Infinity, -Infinity], "c": {"d": 1e999, "e": -1e999, "f": 1.5, "g": 2}}\n'
    assert list(read_lines(io.BytesIO(data))) == [
        (1, {"a": None, "b": [None, None], "c": {"d": None, "e": None, "f": 1.5, "g": 2}})]


@pytest.mark.parametrize("depth, ok", [(100, True), (101, False), (900, False), (100_000, False)])
def test_read_lines_nesting_limit_is_an_error_record_never_a_recursion_error(depth, ok):
    line = '{"v": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}\n"  # the object itself is level 1
    (number, value), (_, after) = read_lines(io.StringIO(line + '{"text": "next"}\n'))
    assert after == {"text": "next"}  # reading goes on
    if ok:
        assert isinstance(value, dict)
        dumps_line(value)  # and it can be written
    else:
        assert isinstance(value, ErrorRecord) and value.error_type == "InvalidInput"
        assert "nested deeper than 100 levels" in value.message


def test_read_lines_other_parse_failures_are_error_records():
    data = b'{"n": ' + b"9" * 5000 + b'}\n{"text": "\\ud800 lone"}\n'  # an int over Python's digit limit
    (_, big), (_, lone) = read_lines(io.BytesIO(data))
    assert isinstance(big, ErrorRecord) and big.error_type == "InvalidJSON"
    assert lone == {"text": "\ud800 lone"}  # parsed; the text check makes it an error record later
    assert json.loads(dumps_line(lone)) == lone


@pytest.mark.parametrize("opener, name", [(gzip.open, "in.jsonl.gz"), (bz2.open, "in.jsonl.bz2"),
                                          (lzma.open, "in.jsonl.xz"), (gzip.open, "misnamed.jsonl")])
def test_read_lines_decompresses_by_magic_bytes(tmp_path, opener, name):
    data = b'{"text": "a"}\n\n{"text": "b"}\n'
    with opener(tmp_path / name, "wb") as f:
        f.write(data)
    expected = list(read_lines(io.BytesIO(data)))
    assert list(read_lines(tmp_path / name)) == expected
    with open(tmp_path / name, "rb") as f:  # a non-seekable stream of compressed bytes works the same
        assert list(read_lines(io.BufferedReader(_Unseekable(f.read())))) == expected


class _Unseekable(io.RawIOBase):
    """Bytes handed out a few at a time by a stream that cannot seek (a pipe)."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self._data = data

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = min(len(buffer), len(self._data), 3)
        buffer[:count], self._data = self._data[:count], self._data[count:]
        return count


def test_read_lines_truncated_compressed_input_is_a_clear_fatal_error(tmp_path):
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(gzip.compress(b"".join(b'{"text": "post %d"}\n' % i for i in range(5000)))[:-2000])
    reader = read_lines(path)
    assert next(reader) == (1, {"text": "post 0"})
    with pytest.raises(InputUnreadable, match=r"cannot read input .*cut.jsonl.gz after line \d+"):
        list(reader)


def test_read_lines_from_a_named_pipe(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    data = gzip.compress(b'{"text": "a"}\n{"text": "b"}\n')
    assert is_stream_input(fifo) and is_stream_input("-") and is_stream_input("/dev/null")
    assert not is_stream_input(tmp_path) and not is_stream_input(tmp_path / "nope")
    writer = threading.Thread(target=fifo.write_bytes, args=(data,), daemon=True)  # blocks until read
    writer.start()
    assert list(read_lines(fifo)) == [(1, {"text": "a"}), (2, {"text": "b"})]
    writer.join(timeout=60)


# ---------------------------------------------------------------------------------------------------- writing


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_dumps_line_is_compact_unicode_ordered_and_deterministic():
    record = {"z": 1, "text": "Café 🇫🇷 עברית", "a": [1.5, None, True]}
    line = dumps_line(record)
    assert line == '{"z":1,"text":"Café 🇫🇷 עברית","a":[1.5,null,true]}\n'.encode()
    assert dumps_line(dict(record)) == line
    assert dumps_line(ErrorRecord(1, 1, "X", "m")) == b'{"id":1,"line":1,"error":{"type":"X","message":"m"}}\n'


def test_dumps_line_escapes_lone_surrogates_and_rejects_nan():
    value = json.loads('{"text": "bad \\ud800 char"}')
    line = dumps_line(value)
    assert line.endswith(b"\n") and b"\\ud800" in line
    assert json.loads(line) == value
    with pytest.raises(ValueError):
        dumps_line({"score": float("nan")})


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), object()])
def test_encode_record_turns_an_unwritable_output_record_into_its_error_record(bad):
    from mmib_cli.io.writer import encode_record

    line, written = encode_record({"id": "p1", "line": 7, "entities": [{"score": bad}]})
    record = json.loads(line, parse_constant=lambda c: pytest.fail(f"non-strict {c}"))
    assert record["id"] == "p1" and record["line"] == 7 and record["error"]["type"] == "UnserializableRecord"
    assert written == record  # what a run summary counts is what was written


def test_writer_writes_partial_then_renames(tmp_path):
    out = tmp_path / "out.jsonl"
    with AtomicJSONLWriter(out) as writer:
        writer.write({"id": "a", "line": 1, "text": "é"})
        writer.flush()
        assert not out.exists()
        assert partial_path(out).read_bytes() == '{"id":"a","line":1,"text":"é"}\n'.encode()
        writer.write(ErrorRecord("b", 2, "InvalidJSON", "line 2: bad"))
    assert not partial_path(out).exists()
    assert _lines(out) == [{"id": "a", "line": 1, "text": "é"},
                           {"id": "b", "line": 2, "error": {"type": "InvalidJSON", "message": "line 2: bad"}}]
    assert writer.records_written == 2


def test_writer_empty_run_creates_empty_output(tmp_path):
    out = tmp_path / "out.jsonl"
    with AtomicJSONLWriter(out):
        pass
    assert out.read_bytes() == b""


def test_writer_pushes_only_whole_lines(tmp_path, monkeypatch):
    import mmib_cli.io.writer as writer_module

    calls: list[bytes] = []
    real = writer_module._write_all
    monkeypatch.setattr(writer_module, "_write_all", lambda fd, data: (calls.append(bytes(data)), real(fd, data)))
    writer = AtomicJSONLWriter(tmp_path / "out.jsonl").open()
    writer.write({"line": 1, "text": "x" * 100_000})
    writer.write({"line": 2, "text": "y"})
    writer.flush()
    writer.write({"line": 3, "text": "z"})
    writer.close()
    assert len(calls) == 2 and all(c.endswith(b"\n") for c in calls)
    assert [c.count(b"\n") for c in calls] == [2, 1]


def test_writer_refuses_existing_output(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text("old\n")
    with pytest.raises(OutputExists) as info:
        AtomicJSONLWriter(out)
    assert "--force" in str(info.value) and "--resume" in str(info.value)
    assert info.value.exit_code == ExitCode.USAGE
    assert out.read_text() == "old\n"


def test_writer_refuses_stale_partial_but_not_an_empty_one(tmp_path):
    out = tmp_path / "out.jsonl"
    partial_path(out).write_text('{"line": 1}\n')
    with pytest.raises(OutputExists, match="--resume"):
        AtomicJSONLWriter(out)
    partial_path(out).write_text("")
    with AtomicJSONLWriter(out) as writer:
        writer.write({"line": 1})
    assert _lines(out) == [{"line": 1}]


def test_writer_force_keeps_old_output_until_close(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text('{"old": true}\n')
    with AtomicJSONLWriter(out, force=True) as writer:
        writer.write({"line": 1})
        assert _lines(out) == [{"old": True}]
    assert _lines(out) == [{"line": 1}]


def test_writer_force_and_resume_are_exclusive(tmp_path):
    with pytest.raises(ValueError):
        AtomicJSONLWriter(tmp_path / "o.jsonl", force=True, resume=True)


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_writer_interrupt_keeps_complete_partial(tmp_path, exc):
    out = tmp_path / "out.jsonl"
    with pytest.raises(exc):
        with AtomicJSONLWriter(out) as writer:
            writer.write({"id": 1, "line": 1})
            writer.write({"id": 2, "line": 2})
            raise exc()
    assert not out.exists()
    assert partial_path(out).read_bytes() == b'{"id":1,"line":1}\n{"id":2,"line":2}\n'


def test_writer_resume_repairs_cut_line_and_appends(tmp_path):
    out = tmp_path / "out.jsonl"
    partial_path(out).write_bytes(b'{"id":"a","line":1}\n{"id":"b","line":3}\n{"id":"c","li')
    writer = AtomicJSONLWriter(out, resume=True)
    assert writer.done_lines == {(1, "a"), (3, "b")}
    assert partial_path(out).read_bytes() == b'{"id":"a","line":1}\n{"id":"b","line":3}\n'  # repaired at once
    assert writer.is_done(1, "a") and writer.is_done(3) and not writer.is_done(4, "c")
    with pytest.raises(OutputExists, match="input changed"):
        writer.is_done(3, "other")
    with writer:
        writer.write({"id": "c", "line": 4})
    assert [r["line"] for r in _lines(out)] == [1, 3, 4]
    assert writer.records_written == 1


@pytest.mark.parametrize(
    "content",
    [b'garbage\n{"id":1,"line":1}\n', b'{"id":1,"line":1}\n{"id":2,"li\n', b'{"id":1}\n{"id":2}\n',
     b'{"id":1,"line":"1"}\n', b"[1]\n"],
)
def test_writer_resume_refuses_foreign_files_and_leaves_them_alone(tmp_path, content):
    out = tmp_path / "out.jsonl"
    partial_path(out).write_bytes(content + b"cut")
    with pytest.raises(OutputExists, match="--force"):
        AtomicJSONLWriter(out, resume=True)
    assert partial_path(out).read_bytes() == content + b"cut"


def test_writer_resume_moves_finished_output_only_when_writing_starts(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_bytes(b'{"id":1,"line":1}\n')
    writer = AtomicJSONLWriter(out, resume=True)  # e.g. the model then fails to load: nothing may change
    assert writer.done_lines == {(1, 1)}
    assert out.exists() and not partial_path(out).exists()
    writer.open()
    assert not out.exists() and partial_path(out).exists()
    writer.abort()
    assert partial_path(out).read_bytes() == b'{"id":1,"line":1}\n'


def test_writer_rejects_writes_after_close(tmp_path):
    writer = AtomicJSONLWriter(tmp_path / "out.jsonl")
    writer.close()
    writer.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        writer.write({"line": 1})


def test_writer_resume_from_finished_output_and_from_nothing(tmp_path):
    out = tmp_path / "out.jsonl"
    with AtomicJSONLWriter(out, resume=True) as writer:  # nothing to resume: a fresh run
        assert writer.done_lines == frozenset()
        writer.write({"id": "x", "line": 1})
    with AtomicJSONLWriter(out, resume=True) as writer:
        assert writer.done_lines == {(1, "x")}
        writer.write({"id": "y", "line": 2})
    assert _lines(out) == [{"id": "x", "line": 1}, {"id": "y", "line": 2}]
    assert not partial_path(out).exists()


def test_writer_to_stdout(monkeypatch):
    buffer = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(buffer, encoding="utf-8"))
    with AtomicJSONLWriter("-", force=True) as writer:
        writer.write({"line": 1, "text": "🙂"})
    assert buffer.getvalue() == '{"line":1,"text":"🙂"}\n'.encode()
    assert writer.path is None and writer.partial_path is None


def test_writer_to_text_only_stdout(monkeypatch):
    text = io.StringIO()
    monkeypatch.setattr(sys, "stdout", text)
    with AtomicJSONLWriter("-") as writer:
        writer.write({"line": 1, "text": "é"})
    assert text.getvalue() == '{"line":1,"text":"é"}\n'


def test_writer_unwritable_output_is_an_mmib_error(tmp_path):
    with pytest.raises(MMIBError, match="cannot write output"):
        AtomicJSONLWriter(tmp_path / "missing-dir" / "out.jsonl").open()


def test_round_trip_read_write(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": 1, "text": "a"}\n{oops\n{"text": "b"}\n', encoding="utf-8")
    out = tmp_path / "out.jsonl"
    with AtomicJSONLWriter(out) as writer:
        for number, item in read_lines(src):
            if isinstance(item, ErrorRecord):
                writer.write(item)
            else:
                post = parse_post(item, number)
                writer.write(make_output(post, tokens=[], bio=[], entities=[], image_used=False, model="m@1"))
    records = _lines(out)
    assert [r["line"] for r in records] == [1, 2, 3]
    assert [r["id"] for r in records] == [1, 2, 3]
    assert records[1]["error"]["type"] == "InvalidJSON"
    validator = jsonschema.Draft202012Validator(output_schema())
    for record in records:
        validator.validate(record)


def test_read_output_ignores_blank_lines_of_an_output_file(tmp_path):
    from mmib_cli.io.outputs import read_output

    path = tmp_path / "out.jsonl"
    path.write_text('{"id": "a", "line": 1}\n\n{bad\n')
    records = list(read_output(path))
    assert records[0] == {"id": "a", "line": 1} and records[1]["error"]["type"] == "InvalidJSON"
    assert len(records) == 2
