"""LinearChainCRF against brute force over every tag sequence on small random cases."""
from __future__ import annotations

import itertools

import pytest
import torch

from mmib_cli.model.configuration import NER_LABELS
from mmib_cli.model.crf import FORBIDDEN_SCORE, LinearChainCRF, bio_transition_mask


def _random_crf(num_tags: int, seed: int, allowed: torch.Tensor | None = None) -> LinearChainCRF:
    torch.manual_seed(seed)
    crf = LinearChainCRF(num_tags, allowed_transitions=allowed).double()
    with torch.no_grad():  # larger than the default init, so the transitions matter
        for p in crf.parameters():
            p.normal_(0.0, 1.0)
    return crf


def _path_score(crf: LinearChainCRF, emissions: torch.Tensor, path: tuple[int, ...]) -> torch.Tensor:
    """Score of one path of one sequence, written out term by term."""
    start = crf.start_transitions + crf.start_penalty
    trans = crf.transitions + crf.transition_penalty
    total = start[path[0]] + emissions[0, path[0]]
    for t in range(1, len(path)):
        total = total + trans[path[t - 1], path[t]] + emissions[t, path[t]]
    return total + crf.end_transitions[path[-1]]


def _brute_force(crf: LinearChainCRF, emissions: torch.Tensor, length: int):
    """(best path, log Z, marginals (length, K)) of one sequence by enumerating all K**length paths."""
    num_tags = emissions.size(-1)
    paths = list(itertools.product(range(num_tags), repeat=length))
    scores = torch.stack([_path_score(crf, emissions[:length], p) for p in paths])
    log_z = torch.logsumexp(scores, dim=0)
    probs = torch.exp(scores - log_z)
    marginals = torch.zeros(length, num_tags, dtype=emissions.dtype)
    for p, prob in zip(paths, probs):
        for t, tag in enumerate(p):
            marginals[t, tag] += prob
    return list(paths[int(scores.argmax())]), log_z, marginals


CASES = [  # (num_tags, lengths of the batch rows, max length)
    (3, [4, 4, 4], 4),
    (4, [1, 3, 2], 3),
    (3, [5, 2, 1, 4], 5),
    (2, [6, 6], 6),
]


@pytest.mark.parametrize("num_tags,lengths,steps", CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_brute_force(num_tags: int, lengths: list[int], steps: int, seed: int) -> None:
    crf = _random_crf(num_tags, seed)
    emissions = torch.randn(len(lengths), steps, num_tags, dtype=torch.float64) * 2
    mask = torch.arange(steps)[None, :] < torch.tensor(lengths)[:, None]
    tags = torch.randint(num_tags, (len(lengths), steps)).masked_fill(~mask, 0)

    decoded = crf.decode(emissions, mask)
    nll = crf.neg_log_likelihood(emissions, tags, mask, reduction="none")
    marginals = crf.marginals(emissions, mask)
    for b, n in enumerate(lengths):
        best, log_z, brute_marginals = _brute_force(crf, emissions[b], n)
        assert decoded[b] == best
        gold = _path_score(crf, emissions[b, :n], tuple(tags[b, :n].tolist()))
        torch.testing.assert_close(nll[b], log_z - gold)
        torch.testing.assert_close(marginals[b, :n], brute_marginals)
        torch.testing.assert_close(marginals[b, :n].sum(-1), torch.ones(n, dtype=torch.float64))
        assert torch.all(marginals[b, n:] == 0)


def test_reductions_and_alias() -> None:
    crf = _random_crf(3, 0)
    emissions = torch.randn(3, 4, 3, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    tags = torch.randint(3, (3, 4))
    per_row = crf.neg_log_likelihood(emissions, tags, mask, reduction="none")
    assert torch.all(per_row > 0)
    torch.testing.assert_close(crf.neg_log_likelihood(emissions, tags, mask, reduction="sum"), per_row.sum())
    torch.testing.assert_close(crf.neg_log_likelihood(emissions, tags, mask), per_row.mean())
    torch.testing.assert_close(crf(emissions, tags, mask), per_row.mean())
    torch.testing.assert_close(crf.neg_log_likelihood(emissions, tags, mask, reduction="token_mean"),
                               per_row.sum() / 7)
    with pytest.raises(ValueError, match="reduction"):
        crf.neg_log_likelihood(emissions, tags, mask, reduction="avg")


def test_empty_rows_and_time_major() -> None:
    crf = _random_crf(4, 3)
    emissions = torch.randn(3, 5, 4, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    tags = torch.randint(4, (3, 5))
    decoded = crf.decode(emissions, mask)
    assert [len(d) for d in decoded] == [3, 0, 5]
    nll = crf.neg_log_likelihood(emissions, tags, mask, reduction="none")
    assert nll[1] == 0 and torch.isfinite(nll).all()
    # mean is over the non-empty rows
    torch.testing.assert_close(crf.neg_log_likelihood(emissions, tags, mask), nll.sum() / 2)
    assert crf.marginals(emissions, mask)[1].abs().sum() == 0

    time_major = LinearChainCRF(4, batch_first=False).double()
    time_major.load_state_dict(crf.state_dict())
    assert time_major.decode(emissions.transpose(0, 1), mask.t()) == decoded
    torch.testing.assert_close(time_major.neg_log_likelihood(emissions.transpose(0, 1), tags.t(), mask.t(), "none"),
                               nll)
    torch.testing.assert_close(time_major.marginals(emissions.transpose(0, 1), mask.t()).transpose(0, 1),
                               crf.marginals(emissions, mask))


def test_rejects_non_prefix_mask_and_bad_shapes() -> None:
    crf = LinearChainCRF(3)
    with pytest.raises(ValueError, match="prefix"):
        crf.decode(torch.randn(1, 3, 3), torch.tensor([[True, False, True]]))
    with pytest.raises(ValueError, match="emissions"):
        crf.decode(torch.randn(1, 3, 4), torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="allowed_transitions"):
        LinearChainCRF(3, allowed_transitions=torch.ones(2, 2, dtype=torch.bool))


def test_bio_transition_mask() -> None:
    allowed = bio_transition_mask(NER_LABELS)
    k = len(NER_LABELS)
    assert allowed.shape == (k + 1, k)
    idx = {label: i for i, label in enumerate(NER_LABELS)}
    assert not allowed[idx["O"], idx["I-PER"]]
    assert not allowed[idx["B-LOC"], idx["I-PER"]]
    assert not allowed[idx["I-LOC"], idx["I-PER"]]
    assert not allowed[k, idx["I-ORG"]]  # start -> I-x
    assert allowed[idx["B-PER"], idx["I-PER"]] and allowed[idx["I-PER"], idx["I-PER"]]
    assert allowed[idx["I-PER"], idx["B-LOC"]] and allowed[idx["B-MISC"], idx["O"]] and allowed[k, idx["B-PER"]]
    assert allowed[:, idx["O"]].all() and allowed[:, idx["B-MISC"]].all()
    with pytest.raises(ValueError, match="BIO"):
        bio_transition_mask(["O", "PER"])


def _is_valid_bio(tags: list[int], labels: list[str]) -> bool:
    previous = "O"
    for tag in tags:
        label = labels[tag]
        if label.startswith("I-") and previous[2:] != label[2:]:
            return False
        previous = label
    return True


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_constraints_respected(seed: int) -> None:
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    allowed = bio_transition_mask(labels)
    crf = _random_crf(len(labels), seed, allowed)
    steps = 4
    emissions = torch.randn(6, steps, len(labels), dtype=torch.float64) * 3
    emissions[:, :, [2, 4]] += 4.0  # the unconstrained optimum would be full of I- tags
    lengths = [4, 3, 2, 1, 4, 4]
    mask = torch.arange(steps)[None, :] < torch.tensor(lengths)[:, None]
    decoded = crf.decode(emissions, mask)
    marginals = crf.marginals(emissions, mask)
    for b, n in enumerate(lengths):
        assert _is_valid_bio(decoded[b], labels)
        # the best valid path, by enumeration
        valid = [p for p in itertools.product(range(len(labels)), repeat=n) if _is_valid_bio(list(p), labels)]
        scores = torch.stack([_path_score(crf, emissions[b, :n], p) for p in valid])
        assert decoded[b] == list(valid[int(scores.argmax())])
        # marginals: the valid paths carry (numerically) all the mass, and nothing starts with an I- tag
        brute = torch.zeros(n, len(labels), dtype=torch.float64)
        for p, prob in zip(valid, torch.softmax(scores, 0)):
            for t, tag in enumerate(p):
                brute[t, tag] += prob
        torch.testing.assert_close(marginals[b, :n], brute)
        assert marginals[b, 0, [2, 4]].max() < 1e-12
    # an invalid gold path costs about |FORBIDDEN_SCORE| but stays finite, with a finite gradient
    emissions.requires_grad_(True)
    bad = torch.tensor([[0, 2, 0, 0]])
    loss = crf.neg_log_likelihood(emissions[:1], bad, mask[:1])
    assert torch.isfinite(loss) and loss > -FORBIDDEN_SCORE / 2
    loss.backward()
    assert torch.isfinite(emissions.grad).all()


def test_half_precision_emissions_are_promoted() -> None:
    crf = LinearChainCRF(3, allowed_transitions=bio_transition_mask(["O", "B-PER", "I-PER"]))
    emissions = torch.randn(2, 5, 3)
    mask = torch.ones(2, 5, dtype=torch.bool)
    assert crf.decode(emissions.half(), mask) == crf.decode(emissions.half().float(), mask)
    marginals = crf.marginals(emissions.bfloat16(), mask)
    assert marginals.dtype == torch.float32 and torch.isfinite(marginals).all()
