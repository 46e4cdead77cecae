"""MMIBModel and MMIBConfig on a tiny random BERT and a tiny CNN (fast, CPU only)."""
from __future__ import annotations

import json
import logging

import pytest
import torch
from torch import nn

from mmib_cli.model import NER_LABELS, NUM_WORD_SHAPES, RE_LABELS, MMIBConfig, MMIBModel, MMIBOutput

VOCAB = 60


def tiny_bert() -> nn.Module:
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32)
    return BertModel(config, add_pooling_layer=False)


def tiny_cnn() -> nn.Module:
    """A 2-layer conv stack (with BatchNorm, to check that a frozen backbone's statistics never move)."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, stride=2, padding=1))


def make_config(task: str = "ner", **overrides) -> MMIBConfig:
    values = dict(task=task, hidden_size=32, image_feature_dim=16, latent_size=32, num_attention_heads=4)
    values.update(overrides)
    return MMIBConfig(**values)


def make_model(task: str = "ner", backbone: bool = True, seed: int = 0, **overrides) -> MMIBModel:
    torch.manual_seed(seed)
    return MMIBModel(make_config(task, **overrides), tiny_bert(), tiny_cnn() if backbone else None)


def distinct_images(batch: int, generator: torch.Generator) -> torch.Tensor:
    """Images that differ globally (a random colour each plus noise), so pooled features tell them apart."""
    colour = torch.randn(batch, 3, 1, 1, generator=generator) * 2
    return colour + 0.1 * torch.randn(batch, 3, 16, 16, generator=generator)


def ner_batch(batch: int = 4, words: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    """[CLS] w1..wn [SEP] [PAD]..; one piece per word; random valid BIO labels; images on every row."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, words + 1, (batch,), generator=g)
    lengths[0] = words
    seq = words + 2
    input_ids = torch.randint(5, VOCAB, (batch, seq), generator=g)
    attention_mask = torch.zeros(batch, seq, dtype=torch.long)
    word_shape_ids = torch.randint(1, NUM_WORD_SHAPES, (batch, seq), generator=g)
    word_mask = torch.arange(words)[None, :] < lengths[:, None]
    labels = torch.zeros(batch, words, dtype=torch.long)
    for b, n in enumerate(lengths.tolist()):
        input_ids[b, 0], input_ids[b, n + 1] = 1, 2
        input_ids[b, n + 2:] = 0
        attention_mask[b, : n + 2] = 1
        word_shape_ids[b, 0] = 0
        word_shape_ids[b, n + 1:] = 0
        previous = "O"
        for t in range(n):
            tag = int(torch.randint(len(NER_LABELS), (1,), generator=g))
            if NER_LABELS[tag].startswith("I-") and previous[2:] != NER_LABELS[tag][2:]:
                tag -= 1  # I-x -> B-x
            labels[b, t] = tag
            previous = NER_LABELS[tag]
    word_index = (torch.arange(words) + 1)[None, :].repeat(batch, 1).masked_fill(~word_mask, 0)
    return dict(input_ids=input_ids, attention_mask=attention_mask, word_shape_ids=word_shape_ids,
                pixel_values=distinct_images(batch, g), image_present=torch.ones(batch, dtype=torch.bool),
                word_index=word_index, word_mask=word_mask, labels=labels)


def re_batch(batch: int = 4, seq: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, VOCAB, (batch, seq), generator=g)
    input_ids[:, 0] = 1
    attention_mask = torch.ones(batch, seq, dtype=torch.long)
    attention_mask[1:, seq - 2:] = 0
    return dict(input_ids=input_ids, attention_mask=attention_mask,
                word_shape_ids=torch.randint(0, NUM_WORD_SHAPES, (batch, seq), generator=g),
                pixel_values=distinct_images(batch, g), image_present=torch.ones(batch, dtype=torch.bool),
                head_index=torch.randint(1, seq - 2, (batch,), generator=g),
                tail_index=torch.randint(1, seq - 2, (batch,), generator=g),
                labels=torch.randint(len(RE_LABELS), (batch,), generator=g))


def without_labels(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k != "labels"}


# ---------------------------------------------------------------------------------------------------- shapes


def test_forward_shapes_ner() -> None:
    model = make_model("ner")
    batch = ner_batch()
    out = model(**batch)
    assert isinstance(out, MMIBOutput)
    assert out.logits.shape == (4, 6, len(NER_LABELS))
    for value in (out.loss, out.task_loss, out.kl_text, out.kl_image, out.ar_loss):
        assert value.dim() == 0 and torch.isfinite(value)
    expected = out.task_loss + out.kl_text + out.kl_image + out.ar_loss
    torch.testing.assert_close(out.loss, expected)
    no_labels = model(**without_labels(batch))
    assert no_labels.loss is None and no_labels.task_loss is None
    assert no_labels.kl_text.dim() == 0 and no_labels.ar_loss.dim() == 0

    model.eval()
    with torch.no_grad():
        emissions = model(**without_labels(batch)).logits
    tags, marginals = model.decode(emissions, batch["word_mask"])
    assert [len(t) for t in tags] == batch["word_mask"].sum(1).tolist()
    assert marginals.shape == emissions.shape
    torch.testing.assert_close(marginals.sum(-1), batch["word_mask"].float())
    with pytest.raises(ValueError, match="word_index"):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


def test_forward_shapes_re_and_reduction() -> None:
    model = make_model("re").eval()
    batch = re_batch()
    with torch.no_grad():
        out = model(**batch)
    assert out.logits.shape == (4, len(RE_LABELS))
    assert out.loss is not None and out.loss.dim() == 0
    summed = make_model("re", re_loss_reduction="sum").eval()
    with torch.no_grad():
        torch.testing.assert_close(summed(**batch).task_loss, out.task_loss * 4)
    with pytest.raises(ValueError, match="only available for task 'ner'"):
        model.decode(out.logits[:, None, :], torch.ones(4, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="head_index"):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


def test_re_label_weights_weigh_each_row() -> None:
    """Weighted rows: all-ones weights change nothing; a weight of 0 drops the row; the mean is the weighted mean."""
    model = make_model("re").eval()
    batch = re_batch()
    with torch.no_grad():
        plain = model(**batch).task_loss
        ones = model(**batch, label_weights=torch.ones(4)).task_loss
        rows = [model(**{k: v[i:i + 1] for k, v in batch.items()}).task_loss for i in range(4)]
        weights = torch.tensor([1.0, 0.0, 0.5, 1.0])
        weighted = model(**batch, label_weights=weights).task_loss
        summed = make_model("re", re_loss_reduction="sum").eval()(**batch, label_weights=weights).task_loss
    torch.testing.assert_close(ones, plain)
    expected = sum(w * r for w, r in zip(weights, rows))
    torch.testing.assert_close(weighted, expected / weights.sum())
    torch.testing.assert_close(summed, expected)


# ---------------------------------------------------------------------------------------------------- regularizers


def test_kl_matches_closed_form_and_ignores_padding() -> None:
    model = make_model("ner").eval()
    batch = ner_batch(seed=3)
    with torch.no_grad():
        out = model(**batch)
        mask = batch["attention_mask"].bool()
        text = model.encode_text(batch["input_ids"], batch["attention_mask"], batch["word_shape_ids"])
        image, _ = model.encode_image(batch["pixel_values"], batch["image_present"], 4)
        mu_t, lv_t = model.txt_mean(text, text, mask), model.txt_logvar(text, text, mask)
        mu_v, lv_v = model.img_mean(image, image), model.img_logvar(image, image)
    # by hand: KL(N(mu, s^2) || N(0, 1)) = 0.5 * (s^2 + mu^2 - 1 - log s^2), per element
    total, count = 0.0, 0
    for b in range(4):
        for t in range(mask.size(1)):
            if mask[b, t]:
                s2, mu = lv_t[b, t].exp(), mu_t[b, t]
                total += float((0.5 * (s2 + mu**2 - 1 - lv_t[b, t])).sum())
                count += mu.numel()
    assert out.kl_text.item() == pytest.approx(total / count, rel=1e-5)
    expected_image = (0.5 * (lv_v.exp() + mu_v**2 - 1 - lv_v)).mean()
    assert out.kl_image.item() == pytest.approx(expected_image.item(), rel=1e-5)
    assert out.kl_text > 0 and out.kl_image > 0

    # padded pieces change nothing: keys are masked and the KL averages over real tokens only
    changed = dict(batch, input_ids=batch["input_ids"].masked_fill(~mask, 7))
    with torch.no_grad():
        again = model(**changed)
    torch.testing.assert_close(again.kl_text, out.kl_text)
    torch.testing.assert_close(again.logits, out.logits)


def test_regularizers_off_are_zero() -> None:
    model = make_model("ner", use_kl=False, use_ar=False).eval()
    out = model(**ner_batch())
    assert out.kl_text.item() == 0 and out.kl_image.item() == 0 and out.ar_loss.item() == 0
    torch.testing.assert_close(out.loss, out.task_loss)


def test_ar_needs_two_rows_with_images() -> None:
    model = make_model("ner").eval()
    batch = ner_batch()
    with torch.no_grad():
        one = model(**dict(batch, image_present=torch.tensor([True, False, False, False])))
        none = model(**dict(batch, pixel_values=None, image_present=None))
        two = model(**dict(batch, image_present=torch.tensor([True, False, True, False])))
    assert one.ar_loss.item() == 0 and none.ar_loss.item() == 0
    assert two.ar_loss.item() > 0


def test_ar_lower_for_matched_than_shuffled_pairs() -> None:
    # bilinear: the concat discriminator's logit is additive in (z_t, z_v), so it cannot tell pairs apart
    model = make_model("re", ar_score="bilinear", ar_negatives=3, seed=1)
    batch = without_labels(re_batch(seed=1))
    derangement = torch.tensor([2, 3, 1, 0])
    shuffled = dict(batch, pixel_values=batch["pixel_values"][derangement])
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.eval()  # optimise on the bottleneck means: without sampling noise a few steps suffice
    with torch.no_grad():
        initial = model(**batch).ar_loss
    for _ in range(30):
        optimizer.zero_grad()
        model(**batch).ar_loss.backward()
        optimizer.step()
    with torch.no_grad():
        matched_loss, shuffled_loss = model(**batch).ar_loss, model(**shuffled).ar_loss
    assert matched_loss < initial
    assert matched_loss < shuffled_loss - 0.3


# ---------------------------------------------------------------------------------------------------- images


def test_rows_without_image_use_the_learned_tokens() -> None:
    model = make_model("ner").eval()
    batch = ner_batch()
    present = torch.tensor([True, False, True, False])
    with torch.no_grad():
        tokens, has_image = model.encode_image(batch["pixel_values"], present, 4)
        out = model(**dict(batch, image_present=present))
        noisy = batch["pixel_values"].clone()
        noisy[~present] = torch.randn_like(noisy[~present]) * 5
        out_noisy = model(**dict(batch, image_present=present, pixel_values=noisy))
    assert tokens.shape == (4, 5, 32)
    assert has_image.tolist() == present.tolist()
    torch.testing.assert_close(tokens[1], model.no_image_tokens)
    assert not torch.allclose(tokens[0], model.no_image_tokens)
    torch.testing.assert_close(out_noisy.logits, out.logits)  # absent rows' pixels are never looked at

    with torch.no_grad():
        text_only = model(**dict(batch, pixel_values=None, image_present=None))
        all_absent = model(**dict(batch, image_present=torch.zeros(4, dtype=torch.bool)))
    torch.testing.assert_close(text_only.logits, all_absent.logits)
    assert text_only.logits.shape == out.logits.shape

    no_backbone = make_model("ner", backbone=False).eval()
    disabled = make_model("ner", use_image=False).eval()
    with torch.no_grad():
        assert no_backbone(**batch).logits.shape == out.logits.shape
        tokens, has_image = disabled.encode_image(batch["pixel_values"], None, 4)
    assert not has_image.any()
    torch.testing.assert_close(tokens, disabled.no_image_tokens.expand(4, -1, -1))


def test_frozen_backbone_gets_no_gradient_and_stays_in_eval() -> None:
    model = make_model("ner")
    backbone = model.image_backbone
    bn_before = {k: v.clone() for k, v in backbone.state_dict().items()}
    model.train()
    assert model.training and not backbone.training
    out = model(**ner_batch())
    out.loss.backward()
    assert all(not p.requires_grad and p.grad is None for p in backbone.parameters())
    assert model.image_projection.weight.grad is not None
    assert model.text_encoder.embeddings.word_embeddings.weight.grad is not None
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, bn_before[key]), key

    trainable = make_model("ner", freeze_image_backbone=False)
    trainable.train()
    assert trainable.image_backbone.training
    trainable(**ner_batch()).loss.backward()
    assert trainable.image_backbone[0].weight.grad is not None


def test_init_weights_leaves_encoders_untouched() -> None:
    torch.manual_seed(0)
    text, image = tiny_bert(), tiny_cnn()
    text_state = {k: v.clone() for k, v in text.state_dict().items()}
    image_state = {k: v.clone() for k, v in image.state_dict().items()}
    model = MMIBModel(make_config("ner"), text, image)
    assert all(torch.equal(v, text_state[k]) for k, v in model.text_encoder.state_dict().items())
    assert all(torch.equal(v, image_state[k]) for k, v in model.image_backbone.state_dict().items())
    names = set(model.state_dict())
    assert any(n.startswith("text_encoder.") for n in names) and any(n.startswith("image_backbone.") for n in names)
    assert model.word_shape_embedding.weight[0].abs().sum() == 0


# ---------------------------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("task", ["ner", "re"])
def test_eval_is_deterministic_and_training_samples(task: str) -> None:
    model = make_model(task, dropout=0.0, attention_dropout=0.0)
    batch = without_labels(ner_batch() if task == "ner" else re_batch())
    model.eval()
    with torch.no_grad():
        first, second = model(**batch), model(**batch)
    assert torch.equal(first.logits, second.logits)
    assert torch.equal(first.kl_text, second.kl_text) and torch.equal(first.ar_loss, second.ar_loss)
    model.train()
    with torch.no_grad():
        sampled_a, sampled_b = model(**batch), model(**batch)
    assert not torch.equal(sampled_a.logits, sampled_b.logits)  # dropout is off: the difference is sampling


# ---------------------------------------------------------------------------------------------------- overfitting


def _fit(model: MMIBModel, batch: dict[str, torch.Tensor], done, steps: int, lr: float = 3e-3) -> int:
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    for step in range(steps):
        model.train()
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
        if step % 10 == 9:
            model.eval()
            with torch.no_grad():
                if done(model(**without_labels(batch))):
                    return step
    return steps


def test_ner_overfits_16_sentences() -> None:
    model = make_model("ner", seed=0)
    batch = ner_batch(batch=16, words=6, seed=5)
    gold = [batch["labels"][b, :n].tolist() for b, n in enumerate(batch["word_mask"].sum(1).tolist())]

    def exact(out: MMIBOutput) -> bool:
        return model.decode(out.logits, batch["word_mask"])[0] == gold

    _fit(model, batch, exact, steps=300)
    model.eval()
    with torch.no_grad():
        tags, marginals = model.decode(model(**without_labels(batch)).logits, batch["word_mask"])
    assert tags == gold
    gold_probs = marginals.gather(2, batch["labels"][:, :, None]).squeeze(2)[batch["word_mask"]]
    assert gold_probs.mean() > 0.5


def test_re_overfits_16_examples() -> None:
    model = make_model("re", seed=0)
    batch = re_batch(batch=16, seed=6)

    def exact(out: MMIBOutput) -> bool:
        return torch.equal(out.logits.argmax(-1), batch["labels"])

    _fit(model, batch, exact, steps=300)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(**without_labels(batch)).logits.argmax(-1), batch["labels"])


# ---------------------------------------------------------------------------------------------------- config


def test_config_defaults_and_round_trip(caplog: pytest.LogCaptureFixture) -> None:
    ner = MMIBConfig()
    assert ner.labels == NER_LABELS and ner.labels is not NER_LABELS
    assert MMIBConfig(task="re").labels == RE_LABELS and len(RE_LABELS) == 23
    assert RE_LABELS[0] == "None" and RE_LABELS[7] == "/per/per/alumi" and RE_LABELS[22] == "/misc/loc/held_on"
    assert ner.num_image_tokens == 5 and ner.latent_size == 256 and ner.re_loss_reduction == "mean"

    config = make_config("re", text_encoder={"source": "path", "path": "/x"}, image_encoder={"source": "tiny-cnn"},
                         ar_score="bilinear", beta_ar=0.5, trained_with_images=True)
    data = json.loads(json.dumps(config.to_dict()))
    assert MMIBConfig.from_dict(data) == config
    data["text_encoder"]["path"] = "/changed"
    assert config.text_encoder["path"] == "/x"  # to_dict is a deep copy
    with caplog.at_level(logging.WARNING, logger="mmib_cli.model.configuration"):
        loaded = MMIBConfig.from_dict({**config.to_dict(), "mmib_version": "0.1.0", "format_version": 1})
    assert loaded == config
    assert "mmib_version" in caplog.text and "format_version" in caplog.text
    assert MMIBConfig.from_dict({"task": "re", "labels": None}).labels == RE_LABELS


@pytest.mark.parametrize("overrides,match", [
    (dict(latent_size=30, num_attention_heads=4), "latent_size \\(30\\).*num_attention_heads \\(4\\)"),
    (dict(task="pos"), "task.*'pos'"),
    (dict(labels=["O"]), "at least 2"),
    (dict(labels=["O", "B-PER", "B-PER"]), "unique"),
    (dict(labels=["O", "PER"]), "'PER' is not a BIO tag"),
    (dict(labels=["O", "I-PER"]), "no matching 'B-PER'"),
    (dict(dropout=1.5), "dropout.*1.5"),
    (dict(ar_score="dot"), "ar_score.*'dot'"),
    (dict(re_loss_reduction="avg"), "re_loss_reduction.*'avg'"),
    (dict(image_grid=0), "image_grid.*0"),
    (dict(beta_kl_text=-1.0), "beta_kl_text.*-1.0"),
    (dict(stride=128, max_length=128), "stride"),
    (dict(use_image="yes"), "use_image"),
])
def test_invalid_config_raises(overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MMIBConfig(**overrides)
