"""The ReCo loss (ReCo's ``module_list.py``, ``compute_reco_loss``) against a slow, literal
per-pixel / per-query implementation that follows the same draw protocol (per class with hard queries: ``randint`` for the queries,
one ``multinomial`` for the negatives' classes, one ``rand`` for their pixels)."""

from __future__ import annotations

import math

import pytest
import torch

from harness_builtin.methods.reco.loss import reco_loss


def slow_reco(rep, labels, valid, prob, strong_threshold, temperature, num_queries, num_negatives,
              generator):
    n, d, h, w = rep.shape
    num_classes = prob.shape[1]
    members = {c: [] for c in range(num_classes)}  # rep vectors (float64 lists), pixel order
    hard = {c: [] for c in range(num_classes)}
    for b in range(n):
        for y in range(h):
            for x in range(w):
                if not bool(valid[b, y, x]):
                    continue
                c = int(labels[b, y, x])
                vec = [float(v) for v in rep[b, :, y, x]]
                members[c].append(vec)
                if float(prob[b, c, y, x]) < strong_threshold:
                    hard[c].append(vec)
    present = [c for c in range(num_classes) if members[c]]
    if len(present) < 2:
        return 0.0

    def mean(vectors):
        return [sum(v[k] for v in vectors) / len(vectors) for k in range(d)]

    def cos(a, b):
        dot = sum(x * y for x, y in zip(a, b))
        return dot / max(math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)), 1e-8)

    protos = {c: mean(members[c]) for c in present}
    total = 0.0
    for i, c in enumerate(present):
        if not hard[c]:
            continue
        picks = torch.randint(len(hard[c]), (num_queries,), generator=generator).tolist()
        others = present[i + 1:] + present[:i]
        sims = torch.tensor([cos(protos[c], protos[o]) for o in others], dtype=torch.float32)
        neg_prob = torch.softmax(sims / temperature, dim=0)
        cls = torch.multinomial(neg_prob, num_queries * num_negatives, replacement=True,
                                generator=generator).view(num_queries, num_negatives)
        u = torch.rand(num_queries, num_negatives, generator=generator)
        loss_c = 0.0
        for q in range(num_queries):
            anchor = hard[c][picks[q]]
            logits = [cos(anchor, protos[c]) / temperature]
            for j in range(num_negatives):
                pool = members[others[int(cls[q, j])]]
                k = min(int(float(u[q, j]) * len(pool)), len(pool) - 1)
                logits.append(cos(anchor, pool[k]) / temperature)
            top = max(logits)
            log_z = top + math.log(sum(math.exp(v - top) for v in logits))
            loss_c += log_z - logits[0]
        total += loss_c / num_queries
    return total / len(present)


def _inputs(seed=0, n=2, d=5, h=4, w=5, num_classes=4, easy_class=None):
    g = torch.Generator().manual_seed(seed)
    rep = torch.randn(n, d, h, w, generator=g)
    labels = torch.randint(0, num_classes, (n, h, w), generator=g)
    valid = torch.rand(n, h, w, generator=g) > 0.2
    logits = torch.randn(n, num_classes, h, w, generator=g) * 3
    prob = torch.softmax(logits, dim=1)
    if easy_class is not None:  # every pixel of that class is confidently right: no hard query
        prob[:, easy_class] = torch.where(labels == easy_class, torch.tensor(0.99),
                                          prob[:, easy_class] * 0)
    return rep, labels, valid, prob


KW = dict(strong_threshold=0.97, temperature=0.5, num_queries=8, num_negatives=16)


@pytest.mark.parametrize("seed", [0, 1])
def test_reco_loss_matches_the_literal_implementation(seed):
    rep, labels, valid, prob = _inputs(seed)
    fast = reco_loss(rep, labels, valid, prob, generator=torch.Generator().manual_seed(42), **KW)
    slow = slow_reco(rep, labels, valid, prob, generator=torch.Generator().manual_seed(42), **KW)
    assert slow > 0
    assert float(fast) == pytest.approx(slow, rel=1e-5, abs=1e-5)


def test_classes_without_hard_queries_still_count_in_the_denominator():
    rep, labels, valid, prob = _inputs(3, easy_class=2)
    assert bool((valid & (labels == 2)).any())
    fast = reco_loss(rep, labels, valid, prob, generator=torch.Generator().manual_seed(7), **KW)
    slow = slow_reco(rep, labels, valid, prob, generator=torch.Generator().manual_seed(7), **KW)
    assert float(fast) == pytest.approx(slow, rel=1e-5, abs=1e-5)


def test_reco_loss_is_zero_with_fewer_than_two_classes():
    rep, labels, valid, prob = _inputs(0)
    rep.requires_grad_(True)
    one = torch.zeros_like(labels)
    loss = reco_loss(rep, one, valid, prob, **KW)
    assert float(loss.detach()) == 0.0
    loss.backward()  # still part of the graph, with a zero gradient
    assert rep.grad is not None and float(rep.grad.abs().sum()) == 0.0
    # two classes present in the labels but only one with valid pixels: also zero
    only = valid & (labels == 1)
    assert float(reco_loss(rep, labels, only, prob, **KW).detach()) == 0.0
    assert float(reco_loss(rep, labels, torch.zeros_like(valid), prob, **KW).detach()) == 0.0


def test_gradient_reaches_only_the_query_pixels():
    rep, labels, valid, prob = _inputs(4)
    rep.requires_grad_(True)
    loss = reco_loss(rep, labels, valid, prob, generator=torch.Generator().manual_seed(0), **KW)
    loss.backward()
    touched = rep.grad.abs().sum(1) > 0
    assert bool(touched.any())
    hard = torch.zeros_like(valid)
    for c in range(prob.shape[1]):
        hard |= valid & (labels == c) & (prob[:, c] < KW["strong_threshold"])
    assert not bool((touched & ~hard).any())  # prototypes and negatives are constants


def test_labels_are_resized_to_the_representation():
    rep, labels, valid, prob = _inputs(5, h=4, w=4)
    big_labels = labels.repeat_interleave(2, 1).repeat_interleave(2, 2)
    big_valid = valid.repeat_interleave(2, 1).repeat_interleave(2, 2)
    a = reco_loss(rep, labels, valid, prob, generator=torch.Generator().manual_seed(1), **KW)
    b = reco_loss(rep, big_labels, big_valid, prob, generator=torch.Generator().manual_seed(1), **KW)
    assert float(a) == pytest.approx(float(b), rel=1e-6)
