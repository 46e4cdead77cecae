"""Synthetic multimodal acceptance: the image path is wired end to end and trainable.

Every post names one ambiguous word ("look at jordan night tonight") whose entity type is given only by the
picture: a red photo makes it PER, a blue one LOC, a green one ORG. Nothing in the text tells the types apart, so a
model trained on the text alone stays at chance (F1 ~ 33 for three balanced types), while MMIB trained with the
pictures (`--images DIR`, IMGID lines -> DIR/<id>.jpg) must get the held-out posts right.

The photos' brightness also follows the text (a bright photo for "morning today", a dark one for "night
tonight"), so matched text-image pairs share information that the alignment regularizer can pick up.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from cli_helpers import invoke

TYPE_COLOURS = {"PER": (1.0, 0.12, 0.12), "LOC": (0.12, 0.12, 1.0), "ORG": (0.12, 0.8, 0.12)}
BRIGHTNESS = {"day": 230, "night": 110}
WHEN_WORDS = {"day": ["morning", "today"], "night": ["night", "tonight"]}
AMBIGUOUS = ["jordan", "washington", "lincoln", "georgia", "chelsea", "phoenix"]
TEMPLATES = [["look", "at", "{w}"], ["{w}", "is", "here"], ["we", "love", "{w}"]]

# With the tiny random BERT a small latent learns the image path slowly: use the default latent size. The tiny CNN
# is random too, so it is fine-tuned (freeze_image_backbone=false). Seeds 0-9 all reach valid F1 >= 95 by epoch 7
# (most by epoch 3-5) with this recipe; a higher head LR sometimes gets stuck with one colour unused.
MODEL_ARGS = ["--config", "latent_size=256", "--config", "num_attention_heads=4",
              "--config", "freeze_image_backbone=false"]
TRAIN_ARGS = ["--epochs", "10", "-b", "8", "--lr", "2e-3", "--head-lr", "2e-3", "--patience", "5", "--seed", "0"]


def write_split(root: Path, split: str, count: int, seed: int) -> Path:
    """`count` posts (types balanced) as CoNLL with IMGID headers, and their photos in `root/images/`."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    blocks = []
    for i in range(count):
        entity_type = list(TYPE_COLOURS)[i % 3]
        when, word, template = rng.choice(list(BRIGHTNESS)), rng.choice(AMBIGUOUS), rng.choice(TEMPLATES)
        level = BRIGHTNESS[when] + rng.randint(-15, 15)
        photo = Image.new("RGB", (48, 48), tuple(int(c * level) for c in TYPE_COLOURS[entity_type]))
        x, y = rng.randint(0, 40), rng.randint(0, 40)
        ImageDraw.Draw(photo).ellipse([x, y, x + 6, y + 6], fill=(255, 255, 255))  # some clutter
        image_id = f"{split}{i}"
        photo.save(images / f"{image_id}.jpg", quality=95)
        words = [word if w == "{w}" else w for w in template] + WHEN_WORDS[when]
        tags = [f"B-{entity_type}" if w == "{w}" else "O" for w in template] + ["O"] * len(WHEN_WORDS[when])
        blocks.append(f"IMGID:{image_id}\n" + "\n".join(f"{w}\t{t}" for w, t in zip(words, tags)))
    path = root / f"{split}.txt"
    path.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("multimodal")
    return {"root": root, "train": write_split(root, "train", 96, seed=0),
            "valid": write_split(root, "valid", 24, seed=1), "images": root / "images"}


def train(synthetic, tiny_bert_dir, output: Path, *, with_images: bool) -> dict:
    images = ["--images", str(synthetic["images"])] if with_images else []
    invoke("train", "ner", "--train", str(synthetic["train"]), "--valid", str(synthetic["valid"]), *images,
           "--text-encoder", str(tiny_bert_dir), "--image-encoder", "tiny-cnn", "-o", str(output),
           *MODEL_ARGS, *TRAIN_ARGS, expect=0)
    return json.loads((output / "metrics.json").read_text())


def evaluate(model: Path, data: Path, images: Path | None, out: Path) -> dict:
    invoke("eval", "ner", "--model", str(model), "--data", str(data), "--output-json", str(out),
           *(["--images", str(images)] if images else []), expect=0)
    return json.loads(out.read_text())


@pytest.mark.slow
def test_the_picture_decides_the_entity_type(synthetic, tiny_bert_dir, tmp_path):
    with_images = train(synthetic, tiny_bert_dir, tmp_path / "mm", with_images=True)
    config = json.loads((tmp_path / "mm" / "config.json").read_text())
    assert config["trained_with_images"] is True
    assert with_images["valid"]["images_used"] == 24
    assert set(with_images["valid"]["per_type"]) == {"PER", "LOC", "ORG"}

    # `mmib eval` agrees with training, and needs the pictures: without them the model is back to guessing
    scored = evaluate(tmp_path / "mm", synthetic["valid"], synthetic["images"], tmp_path / "with.json")
    assert scored["f1"] == with_images["valid"]["f1"] and scored["images_used"] == 24
    blind = evaluate(tmp_path / "mm", synthetic["valid"], None, tmp_path / "without.json")
    assert blind["images_used"] == 0 and blind["f1"] < scored["f1"], (blind, scored)
    # scoring holds a few posts' images at a time: the chunking changes nothing
    from mmib_cli.checkpoint.assemble import load_model
    from mmib_cli.data.datasets import read_examples
    from mmib_cli.workflows.evaluate import score_examples

    loaded = load_model(tmp_path / "mm")
    examples = read_examples("ner", [synthetic["valid"]], loaded.featurizer, loaded.model.config.labels,
                             images=synthetic["images"])
    assert score_examples(loaded, examples, chunk_posts=5) == score_examples(loaded, examples) == {
        k: v for k, v in scored.items() if k not in ("task", "model", "data")}

    # the same model and recipe with the pictures withheld cannot do better than chance (1 type in 3)
    text_only = train(synthetic, tiny_bert_dir, tmp_path / "text", with_images=False)
    assert json.loads((tmp_path / "text" / "config.json").read_text())["trained_with_images"] is False
    assert text_only["valid"]["images_used"] == 0
    assert text_only["valid"]["f1"] < with_images["valid"]["f1"], (text_only["history"], with_images["history"])


def _batch(loaded, path: Path, images: Path, limit: int) -> dict[str, torch.Tensor]:
    from mmib_cli.data.datasets import WindowDataset, make_collate, read_examples

    examples = read_examples("ner", [path], loaded.featurizer, loaded.model.config.labels, images=images,
                             limit=limit)
    assert examples.images_found == len(examples.gold)
    rows = WindowDataset(examples, loaded.image_info)
    return make_collate(loaded.featurizer, "ner", loaded.image_info.image_size)([rows[i] for i in range(len(rows))])


@torch.no_grad()
def _alignment(model, batch: dict[str, torch.Tensor]) -> tuple[float, float]:
    """Eval-mode alignment loss on the matched pairs, and on mismatched ones (each text with its neighbour's photo)."""
    model.eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    mismatched = dict(inputs, pixel_values=torch.roll(inputs["pixel_values"], 1, dims=0))
    return float(model(**inputs).ar_loss), float(model(**mismatched).ar_loss)


@pytest.mark.slow
def test_alignment_loss_falls_on_matched_pairs(synthetic, tiny_bert_dir):
    """Training on the full MMIB objective lowers the alignment loss of the matched (text, photo) training pairs
    below its starting value and below that of mismatched pairs: the regularizer sees what the pairs share.

    Full-batch steps on a few pairs: with the small mini-batches of `mmib train` the (noisy, sampled) alignment
    loss of these tiny random encoders does not move measurably within a test's budget.
    """
    from mmib_cli.checkpoint.assemble import build_model
    from mmib_cli.model import MMIBConfig

    torch.manual_seed(0)
    config = MMIBConfig(task="ner", hidden_size=32, image_feature_dim=16, latent_size=256, num_attention_heads=4,
                        freeze_image_backbone=False, trained_with_images=True,
                        text_encoder={"source": "path", "path": str(tiny_bert_dir)},
                        image_encoder={"source": "tiny-cnn"})
    assert config.use_ar and config.use_kl and config.ar_score == "bilinear"  # the defaults
    loaded = build_model(config)
    batch = _batch(loaded, synthetic["train"], synthetic["images"], limit=24)  # one full batch of 24 pairs
    before, before_mismatched = _alignment(loaded.model, batch)
    assert before == pytest.approx(before_mismatched, abs=0.05)  # an untrained discriminator cannot tell
    optimizer = torch.optim.AdamW([p for p in loaded.model.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(40):
        loaded.model.train()
        loss = loaded.model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after, after_mismatched = _alignment(loaded.model, batch)
    assert after < before  # seeds 0-4: falls by 0.18-0.51
    assert after < after_mismatched  # seeds 0-4: margin 1.4-2.3
