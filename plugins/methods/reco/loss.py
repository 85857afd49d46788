"""ReCo's regional contrastive loss (Liu et al., ICLR 2022; github.com/lorenmt/reco
``module_list.py`` ``compute_reco_loss``)."""

from __future__ import annotations

import torch
import torch.nn.functional as nnf


def reco_loss(rep: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, prob: torch.Tensor, *,
              strong_threshold: float = 0.97, temperature: float = 0.5, num_queries: int = 256,
              num_negatives: int = 512, generator: torch.Generator | None = None) -> torch.Tensor:
    """Regional contrastive loss (ReCo's ``module_list.py`` ``compute_reco_loss``).

    ``rep (N, D, h, w)`` the representations; ``labels (N, H, W)`` class ids; ``valid (N, H, W)``
    which pixels count; ``prob (N, C, h, w)`` the student's softmax. Labels and validity are
    resized to the representation's resolution with nearest interpolation.

    For each class c with a valid pixel: prototype = mean representation of its valid pixels;
    hard queries = its valid pixels whose probability of c is below ``strong_threshold``. With
    fewer than two classes the loss is 0. For each class with a hard query, in class order:
    ``num_queries`` queries drawn uniformly with replacement from the hard pixels, then for
    every query ``num_negatives`` negatives: a class drawn from softmax(cos(proto_c, proto_c') /
    T) over the other classes, a pixel drawn uniformly among that class's valid pixels. Logits =
    cos(query, [proto_c | negatives]) / T; cross-entropy with target 0. The result is the sum
    over classes divided by the number of classes present (classes without hard queries count).
    Gradients reach the queries only (prototypes and negatives are constants, as ReCo).

    Draw order per class (what a replay must follow): ``randint`` for the queries, one
    ``multinomial`` of ``num_queries * num_negatives`` negative classes, one ``rand`` of that
    shape for the pixel positions.
    """
    with torch.autocast(rep.device.type, enabled=False):  # similarities in float32
        return _reco_loss(rep, labels, valid, prob, strong_threshold, temperature, num_queries,
                          num_negatives, generator)


def _reco_loss(rep: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, prob: torch.Tensor,
               strong_threshold: float, temperature: float, num_queries: int, num_negatives: int,
               generator: torch.Generator | None) -> torch.Tensor:
    n, d, h, w = rep.shape
    num_classes = prob.shape[1]
    device = rep.device
    if labels.shape[-2:] != (h, w):
        labels = nnf.interpolate(labels[:, None].float(), size=(h, w), mode="nearest")[:, 0].long()
        valid = nnf.interpolate(valid[:, None].float(), size=(h, w), mode="nearest")[:, 0] > 0.5
    flat = rep.permute(0, 2, 3, 1).reshape(-1, d).float()
    labels = labels.reshape(-1).long()
    valid = valid.reshape(-1).bool()
    prob = prob.detach().permute(0, 2, 3, 1).reshape(-1, num_classes).float()

    present, counts, pixel_index, hard_index = [], [], [], []
    for c in range(num_classes):
        members = valid & (labels == c)
        count = int(members.sum())
        if count == 0:
            continue
        present.append(c)
        counts.append(count)
        pixel_index.append(torch.nonzero(members).squeeze(1))
        hard_index.append(torch.nonzero(members & (prob[:, c] < strong_threshold)).squeeze(1))
    k = len(present)
    if k < 2:
        return flat.sum() * 0.0
    unit = nnf.normalize(flat.detach(), dim=1)  # cosine similarity = dot product of unit vectors
    with torch.no_grad():
        prototypes = torch.stack([flat[idx].mean(0) for idx in pixel_index])
        unit_protos = nnf.normalize(prototypes, dim=1)

    total = flat.new_zeros(())
    for i in range(k):
        hard = hard_index[i]
        if len(hard) == 0:
            continue
        pick = torch.randint(len(hard), (num_queries,), generator=generator).to(device)
        anchors = nnf.normalize(flat[hard[pick]], dim=1)  # (Q, D), the only path of gradients
        with torch.no_grad():
            others = list(range(i + 1, k)) + list(range(i))
            sim = unit_protos[others] @ unit_protos[i]
            neg_prob = torch.softmax(sim / temperature, dim=0).cpu()
            cls = torch.multinomial(neg_prob, num_queries * num_negatives, replacement=True,
                                    generator=generator).view(num_queries, num_negatives)
            u = torch.rand(num_queries, num_negatives, generator=generator)
            sizes = torch.tensor([counts[j] for j in others])
            offsets = torch.cumsum(sizes, 0) - sizes
            pos = (offsets[cls] + torch.minimum((u * sizes[cls]).long(), sizes[cls] - 1)).to(device)
            pool = torch.cat([pixel_index[j] for j in others])  # pixel of each pool position
        positive = anchors @ unit_protos[i]  # (Q,)
        negative = torch.bmm(unit[pool[pos]], anchors[:, :, None]).squeeze(2)  # (Q, N)
        logits = torch.cat([positive[:, None], negative], dim=1) / temperature
        total = total + nnf.cross_entropy(logits, torch.zeros(num_queries, dtype=torch.long,
                                                              device=device))
    return total / k
