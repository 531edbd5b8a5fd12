r"""Encoding many prompts fast and exactly: length buckets and shared prefixes.

Prompt ensembles (T texts × 85 templates) are many short prompts of a few
lengths that share long prefixes (each template's words before the text). Two
facts make them cheap under a causal text tower that pools at the end-of-text
(EOT) token:

* a prompt's features depend only on its tokens up to the EOT, so a batch of
  prompts of similar length runs only up to its own longest EOT
  (:func:`length_buckets` groups prompts so);
* a position's hidden states depend only on the tokens before it, so prompts
  that begin alike compute their common prefix once; the rest of each prompt
  attends to the prefix's keys and values
  (:func:`encode_sharing_prefixes`).

Both give the full-context features up to float rounding.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Dict, List, Sequence, Tuple

import torch
from torch import Tensor

if TYPE_CHECKING:  # no import at run time: the adapters import this module
    from captum_clip_surgery.adapters.base import BlockView

__all__ = ["encode_sharing_prefixes", "length_buckets"]


def length_buckets(lengths: Tensor, max_prompts: int, overhead: float) -> List[Tensor]:
    r"""Split prompts into chunks of similar length, cheapest to encode.

    A chunk is encoded up to its longest prompt, so it costs about
    ``count · longest + overhead`` tokens, ``overhead`` standing for the fixed
    cost of one forward (launches, small-batch inefficiency). Prompts are sorted
    by length and the runs of distinct lengths are grouped by dynamic
    programming to minimise that total; a group larger than ``max_prompts`` is
    split into near-equal consecutive chunks.

    Args:
        lengths (Tensor): ``[N]`` prompt lengths (pooled position + 1).
        max_prompts (int): most prompts per chunk.
        overhead (float): cost of one forward, in tokens.

    Returns:
        list[Tensor]: index tensors into ``lengths`` (on its device), shortest
        prompts first; together they hold every index once.

    Examples::

        >>> [c.tolist() for c in length_buckets(torch.tensor([9, 3, 3, 9]), 8, 0.0)]
        [[1, 2], [0, 3]]
    """
    if max_prompts < 1:
        raise ValueError(f"max_prompts: expected >= 1, got {max_prompts}")
    if lengths.numel() == 0:
        return []
    order = torch.argsort(lengths, stable=True)
    values, counts = torch.unique_consecutive(lengths[order], return_counts=True)
    values_, counts_ = values.tolist(), counts.tolist()
    k = len(values_)
    # best[j]: the cheapest cost of the first j distinct lengths; cut[j]: where its last group starts
    best = [0.0] + [math.inf] * k
    cut = [0] * (k + 1)
    for j in range(1, k + 1):
        total = 0
        for i in range(j, 0, -1):  # one group: distinct lengths i-1 .. j-1
            total += counts_[i - 1]
            cost = best[i - 1] + total * values_[j - 1] + math.ceil(total / max_prompts) * overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i - 1
    groups = []
    j = k
    while j > 0:
        groups.append((cut[j], j))
        j = cut[j]
    starts = [0] + torch.cumsum(counts, 0).tolist()
    chunks: List[Tensor] = []
    for i, j in reversed(groups):
        members = order[starts[i] : starts[j]]
        chunks.extend(torch.tensor_split(members, math.ceil(len(members) / max_prompts)))
    return chunks


def _shared_prefixes(rows: List[List[int]]) -> List[int]:
    r"""Per prompt, how many leading tokens it shares with its most similar other
    prompt (at most its length - 1: the EOT position is never shared)."""
    order = sorted(range(len(rows)), key=rows.__getitem__)
    share = [0] * len(rows)
    for a, b in zip(order, order[1:]):
        x, y = rows[a], rows[b]
        n = 0
        for s, t in zip(x, y):
            if s != t:
                break
            n += 1
        share[a] = max(share[a], n)
        share[b] = max(share[b], n)
    return [min(s, len(r) - 1) for s, r in zip(share, rows)]


def _attend(block: BlockView, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    r"""The block's own attention with a boolean mask (True = may attend), softmax in
    float32."""
    logits = block.attention_logits(q, k).float().masked_fill(~mask, float("-inf"))
    return logits.softmax(dim=-1).to(v.dtype) @ v


def encode_sharing_prefixes(
    token_ids: Tensor,
    lengths: Tensor,
    embed: Callable[[Tensor, Tensor], Tensor],
    blocks: Sequence[BlockView],
    finish: Callable[[Tensor], Tensor],
    max_prompts: int = 512,
    overhead: float = 32.0,
    segment: int = 4096,
) -> Tensor:
    r"""Pooled features of many prompts, each common prefix computed once.

    For a pre-norm transformer with a causal mask that pools the last position
    it runs (``lengths - 1``, the EOT token). Prompts are sorted; each one's
    prefix shared with its nearest neighbour is encoded once per distinct
    prefix, and the remaining tokens (bucketed by their count with
    :func:`length_buckets`) attend to that prefix's keys and values. The blocks
    run one at a time over all prompts of a segment, so memory is that of the
    hidden states, not of a key-value cache. In the last block only the EOT
    position is computed.

    Args:
        token_ids (Tensor): ``[N, L]`` token ids.
        lengths (Tensor): ``[N]`` tokens to run per prompt (pooled position + 1).
        embed (Callable): ``(ids [n, s], positions [n, s]) -> [n, s, C]`` token
            plus positional embedding.
        blocks (list[BlockView]): the tower's blocks.
        finish (Callable): pooled hidden states ``[n, C]`` → features ``[n, D]``
            (final norm and projection).
        max_prompts (int): most prompts per forward.
        overhead (float): the cost of one forward in tokens (bucketing).
        segment (int): prompts whose hidden states are held at once.

    Returns:
        Tensor: ``[N, D]`` features in the input order.
    """
    n = token_ids.shape[0]
    lengths_ = [int(v) for v in lengths.tolist()]
    rows_all = token_ids.tolist()
    rows = [r[:length] for r, length in zip(rows_all, lengths_)]
    order = sorted(range(n), key=rows.__getitem__)  # alike prompts side by side
    out: List[Tuple[List[int], Tensor]] = []
    for start in range(0, n, segment):
        members = order[start : start + segment]
        feats = _encode_segment([rows[i] for i in members], token_ids.device, embed, blocks,
                                finish, max_prompts, overhead)
        out.append((members, feats))
    result = torch.empty(n, out[0][1].shape[-1], dtype=out[0][1].dtype, device=token_ids.device)
    for members, feats in out:
        result[torch.tensor(members, device=token_ids.device)] = feats
    return result


def _pad(rows: List[List[int]], device: torch.device) -> Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [0] * (width - len(r)) for r in rows], device=device)


def _encode_segment(
    rows: List[List[int]],
    device: torch.device,
    embed: Callable[[Tensor, Tensor], Tensor],
    blocks: Sequence[BlockView],
    finish: Callable[[Tensor], Tensor],
    max_prompts: int,
    overhead: float,
) -> Tensor:
    share = _shared_prefixes(rows)
    # distinct prefixes (length >= 1); group 0 is the empty prefix
    index: Dict[Tuple[int, ...], int] = {}
    group = []
    for r, s in zip(rows, share):
        key = tuple(r[:s])
        if s and key not in index:
            index[key] = len(index) + 1
        group.append(index[key] if s else 0)
    prefixes = [list(key) for key in index]

    # the prefixes' hidden states [n_p, P, C] (right-padded: the causal mask keeps pads out)
    p_len = max((len(p) for p in prefixes), default=0)
    xp = None
    if prefixes:
        ids = _pad(prefixes, device)
        pos = torch.arange(p_len, device=device).expand(len(prefixes), -1)
        xp = embed(ids, pos)
        causal = torch.ones(p_len, p_len, dtype=torch.bool, device=device).tril()

    # the suffixes, bucketed by their token count; each bucket's hidden states [n, S, C]
    suffix_len = torch.tensor([len(r) - s for r, s in zip(rows, share)])
    buckets = []
    for chunk in length_buckets(suffix_len, max_prompts, overhead):
        members = chunk.tolist()
        ids = _pad([rows[i][share[i]:] for i in members], device)
        s_len = ids.shape[1]
        offset = torch.tensor([share[i] for i in members], device=device)
        last = torch.tensor([len(rows[i]) - share[i] - 1 for i in members], device=device)
        pos = (offset[:, None] + torch.arange(s_len, device=device)).clamp(
            max=max(len(r) for r in rows) - 1)
        # may attend: the own prefix's positions, then the earlier suffix positions
        prefix_ok = torch.arange(p_len, device=device)[None, :] < offset[:, None]
        suffix_ok = torch.ones(s_len, s_len, dtype=torch.bool, device=device).tril()
        mask = torch.cat([prefix_ok[:, None, :].expand(-1, s_len, -1),
                          suffix_ok.expand(len(members), -1, -1)], dim=-1)[:, None]
        buckets.append({
            "members": members,
            "x": embed(ids, pos),
            "group": torch.tensor([group[i] for i in members], device=device),
            "last": last,
            "mask": mask,
        })

    final = len(blocks) - 1
    for b, block in enumerate(blocks):
        kp = vp = None
        if xp is not None:
            q, k, v = block.qkv(block.norm1(xp))
            # row 0 stands for the empty prefix: every key masked
            kp = torch.cat([torch.zeros_like(k[:1]), k])
            vp = torch.cat([torch.zeros_like(v[:1]), v])
            if b < final:  # the prefixes' own outputs are only needed by later blocks
                xp = xp + block.ls1(block.out(_attend(block, q, k, v, causal)))
                xp = xp + block.ls2(block.mlp(block.norm2(xp)))
        for bucket in buckets:
            x = bucket["x"]
            q, k, v = block.qkv(block.norm1(x))
            mask = bucket["mask"]
            if kp is not None:
                k = torch.cat([kp[bucket["group"]], k], dim=2)
                v = torch.cat([vp[bucket["group"]], v], dim=2)
            else:
                mask = mask[..., p_len:]
            rows_ = torch.arange(x.shape[0], device=device)
            if b == final:  # only the pooled (EOT) position is read
                last = bucket["last"]
                q = q[rows_, :, last][:, :, None]
                mask = mask[rows_, :, last][:, :, None]
                x = x[rows_, last][:, None]
            x = x + block.ls1(block.out(_attend(block, q, k, v, mask)))
            x = x + block.ls2(block.mlp(block.norm2(x)))
            bucket["x"] = x

    feats = None
    for bucket in buckets:
        pooled = finish(bucket["x"][:, 0] if blocks else
                        bucket["x"][torch.arange(len(bucket["members"])), bucket["last"]])
        if feats is None:
            feats = pooled.new_empty(len(rows), pooled.shape[-1])
        feats[torch.tensor(bucket["members"], device=device)] = pooled
    assert feats is not None
    return feats
