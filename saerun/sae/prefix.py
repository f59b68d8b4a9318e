"""Matryoshka with every prefix (block size 1): every width m = 1..d_sae is a nested dictionary.

Latent i (0-based) is in the prefixes m > i. With weights w_m over the widths (a distribution,
`prefix_cdf`) and e0 = y - b_dec (- x W_skip) the error of the empty dictionary,

    loss = mean_b sum_m w_m ||e0_b - sum_{i<m} f_bi W_dec,i||^2.

Written this way a step would cost d_sae decodes. Per token, with its n active latents sorted by
index c_1 < ... < c_n, only n + 1 distinct partial reconstructions exist: the error after the
first j of them, e_j = e0 - sum_{l<=j} f_{c_l} W_dec,{c_l}, is the error of every prefix m in
(c_j, c_{j+1}] (c_0 = 0, c_{n+1} = d_sae), so with C the cumulative weights (C[m] = sum of
w_1..w_m) each token's loss is

    sum_{j=0..n} (C[c_{j+1}] - C[c_j]) ||e_j||^2,

a quadratic form in the token's active decoder rows and e0. Stack them as
W_x = [W_{c_1}; ...; W_{c_n}; e0] and write t_l = C[d_sae] - C[c_l] (the weight of the
prefixes that contain latent c_l; it does not increase with l). Then

    loss_token = sum_{l,l'} f_l f_l' min(t_l, t_l') <W_l, W_l'> - 2 sum_l t_l f_l <W_l, e0>
                 + C[d_sae] ||e0||^2 = sum_r <(M W_x)_r, W_x,r>

for the (n+1) x (n+1) matrix M of those coefficients, and with Z = M' W_x, M' = M with row l
divided by f_l (Z_l = sum_l' f_l' min(t_l, t_l') W_l' - t_l e0, Z_e0 = (M W_x)_e0), every
gradient is read off Z: d/df_l = 2 <Z_l, W_l>, d/dW_{c_l} = 2 f_l Z_l, d/de0 = 2 Z_e0, and
loss_token = sum_l f_l <Z_l, W_l> + <Z_e0, e0>. So one batched product per block of tokens
(Z, plus a row for the decoded sum) gives the loss, the decoded f W_dec and every gradient, in
O(n^2 d_in) per token; the gradients are kept from the forward ([d_sae, d] + [B, d] + [nnz]
floats) and scaled in the backward. `every_prefix_loss` (an autograd Function over sparse
`Codes`) does it a block of tokens at a time (tokens ordered by n, so blocks pad little): memory
stays at a few blocks (32 MB each) instead of nnz x d_in floats (268 MB at d_in 512, k 32,
batch 4096). Against the encoder's d_sae d_in per token, (k+2)(k+1) d_in is cheap while k^2
is small against d_sae (0.29x at d_sae 4096, k 32) and dear where it is not (8.4x at d_sae 512,
k 64). A linear form (two cumulative sums over each token's rows, O(k d_in)) was written first
and ran 3x slower on this CPU: torch's cumsum along the middle axis and the extra passes cost
more than the batched product (BENCHMARKS.md has the step times).

`dense_every_prefix_loss` is the dense reference (`sparse_kernels = False`, and the GPU path):
||e_m||^2 = ||e0||^2 + sum_{i<m} d_i with d_i = f_i (f_i G_ii - 2 <e0, W_i> + 2 sum_{i'<i} f_i'
G_i'i), G = W_dec W_dec^T, so loss = mean_b (C[d_sae] ||e0||^2 + sum_i (C[d_sae] - C[i]) d_i):
plain autograd, but a B x d_sae x d_sae product (d_sae / d_in times a decode's cost).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from saerun.sae.sparse import Codes, _fp32_backward, _fp32_forward

# Floats of one block's [tokens, n_max, d] tensors (32 MB in fp32; a few live at once). Fewer,
# larger blocks pay less per-op overhead: at the bench size, 2^21 took 2.4x as long as 2^23 on
# a loaded 2-core CPU, and 1.1x on a quieter one.
BLOCK_FLOATS = 1 << 23


def prefix_cdf(d_sae: int, distribution: str) -> Tensor:
    """C [d_sae + 1] float64: C[m] = w_1 + ... + w_m, C[0] = 0, C[d_sae] = 1, for the named
    distribution over the widths m = 1..d_sae. uniform: w_m = 1/d_sae. log_uniform: w_m
    proportional to 1/m for d_sae // 64 <= m (at least 1), 0 below."""
    m = torch.arange(1, d_sae + 1, dtype=torch.float64)
    if distribution == "uniform":
        w = torch.ones_like(m)
    elif distribution == "log_uniform":
        w = torch.where(m >= max(1, d_sae // 64), 1.0 / m, 0.0)
    else:
        raise ValueError(f"unknown prefix distribution {distribution!r}")
    return torch.cat([m.new_zeros(1), torch.cumsum(w / w.sum(), 0)])


def _sorted_by_col(codes: Codes) -> Codes:
    """The codes with each token's entries in increasing latent order (a no-op for the TopK
    family's codes, which are built sorted)."""
    key = codes.rows * codes.d_sae + codes.cols
    if key.numel() < 2 or bool((key[1:] > key[:-1]).all()):
        return codes
    perm = key.argsort()
    return Codes(codes.cols[perm], codes.vals[perm], codes.rows[perm], codes.offsets,
                 codes.d_sae)


def _blocks(counts: Tensor, width: int) -> tuple[Tensor, int, list[tuple[int, int, int]]]:
    """(order, skipped, blocks): the tokens in order of their entry count, how many of them
    have none, and (start, stop, n_max) ranges of that order covering the others, each about
    BLOCK_FLOATS floats once padded to its n_max (at least one token)."""
    order = torch.argsort(counts, stable=True)
    sorted_counts = counts.index_select(0, order).tolist()
    blocks: list[tuple[int, int, int]] = []
    total = len(sorted_counts)
    skipped = a = total - sum(1 for c in sorted_counts if c)
    while a < total:
        n = max(1, BLOCK_FLOATS // ((sorted_counts[a] + 2) * width))
        k_max = sorted_counts[min(total, a + n) - 1]
        n = max(1, min(n, BLOCK_FLOATS // ((k_max + 2) * width)))
        b = min(total, a + n)
        blocks.append((a, b, sorted_counts[b - 1]))
        a = b
    return order, skipped, blocks


def _block_matrix(phi: Tensor, tail: Tensor, total: float) -> Tensor:
    """M' [T, n + 2, n + 1] of the module docstring for a block's values phi and tail weights
    [T, n] (padding: both 0): rows l < n give Z_l, row n Z_e0, row n + 1 the decoded sum."""
    t, n = phi.shape
    m = phi.new_zeros(t, n + 2, n + 1)
    # t_max(l, l') = min(t_l, t_l'): the entries are in latent order, and the tail weight
    # C[d_sae] - C[c] does not increase with the latent c.
    m[:, :n, :n] = phi[:, None, :] * torch.minimum(tail[:, :, None], tail[:, None, :])
    m[:, :n, n] = -tail
    m[:, n, :n] = -phi * tail
    m[:, n, n] = total
    m[:, n + 1, :n] = phi
    return m


def _by_latent(latents: Tensor, cols: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    """The [d_sae, n] CSR matrix with values[e] at (latents[e], cols[e]): one stable argsort
    (the same summation order in every process), as `sparse._csr_t`."""
    perm = latents.argsort(stable=True)
    counts = torch.bincount(latents, minlength=shape[0])
    crow = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
    return torch.sparse_csr_tensor(crow, cols.index_select(0, perm), values.index_select(0, perm),
                                   shape, check_invariants=False)


class _EveryPrefix(torch.autograd.Function):
    """(loss, decoded [B, d]) of the module docstring from sparse codes whose entries are in
    latent order within each token, given each entry's tail weight C[d_sae] - C[c] [nnz] and
    total = C[d_sae]. The gradients are computed with the loss (the same products) and kept:
    [d_sae, d] + [B, d] + [nnz] floats; `decoded` (the full f W_dec) has no gradient."""

    @staticmethod
    @_fp32_forward
    def forward(ctx: Any, vals: Tensor, w_dec: Tensor, e0: Tensor,
                idx_all: tuple[Tensor, Tensor, Tensor], tail: Tensor,
                total: float) -> tuple[Tensor, Tensor]:
        cols_all, offsets, counts = idx_all
        need_vals, need_w, need_e0 = ctx.needs_input_grad[:3]
        d_sae, width = w_dec.shape
        nnz, dev = vals.numel(), vals.device
        order, skipped, blocks = _blocks(counts, width)
        source = torch.cat([w_dec, e0])  # token b's e0 is row d_sae + b
        # Entry nnz is padding: latent 0, value 0, tail weight 0 (every gather and scatter
        # below is index_select / scatter_: on a busy CPU, advanced indexing's parallel
        # region costs milliseconds per call).
        cols_p = torch.cat([cols_all, cols_all.new_zeros(1)])
        vals_p = torch.cat([vals, vals.new_zeros(1)])
        tail_p = torch.cat([tail, tail.new_zeros(1)])
        # Per token, in `order` (so each block writes one slice): the decoded sum, and
        # Z_e0 (half e0's gradient), which is total * e0 for a token without entries.
        decoded = e0.new_zeros(e0.shape)
        z_e0 = torch.empty_like(e0)
        empty = e0.index_select(0, order[:skipped])
        z_e0[:skipped] = total * empty
        loss = total * empty.square().sum()
        grad_vals = vals.new_zeros(nnz + 1) if need_vals else None
        grad_w = torch.zeros_like(w_dec) if need_w else None
        for a, b, n in blocks:
            tokens = order[a:b]
            slot = torch.arange(n, device=dev)
            start = offsets.index_select(0, tokens)[:, None]
            idx = torch.where(slot < counts.index_select(0, tokens)[:, None], start + slot, nnz)
            flat = idx.flatten()
            cols = cols_p.index_select(0, flat).view(b - a, n)
            phi = vals_p.index_select(0, flat).view(b - a, n)
            rows = torch.cat([cols, (d_sae + tokens)[:, None]], 1)
            w_x = source.index_select(0, rows.flatten()).view(b - a, n + 1, width)
            m = _block_matrix(phi, tail_p.index_select(0, flat).view(b - a, n), total)
            z = torch.bmm(m, w_x)
            q = (z[:, :n] * w_x[:, :n]).sum(-1)  # <Z_l, W_l>: half the value's gradient
            loss = loss + (phi * q).sum() + (z[:, n] * w_x[:, n]).sum()
            decoded[a:b] = z[:, n + 1]
            z_e0[a:b] = z[:, n]
            if grad_vals is not None:  # padding lands on entry nnz, dropped below
                grad_vals.scatter_(0, flat, 2.0 * q.flatten())
            if grad_w is not None:  # grad_w[c_l] += 2 phi_l Z_l, as one sparse product
                where_z = (torch.arange(b - a, device=dev)[:, None] * (n + 2) + slot)
                grad_w.addmm_(_by_latent(cols.flatten(), where_z.flatten(), 2.0 * phi.flatten(),
                                         (d_sae, (b - a) * (n + 2))), z.view(-1, width))
        if grad_vals is not None:
            grad_vals = grad_vals[:nnz]
        back = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=dev))
        grad_e0 = 2.0 * z_e0.index_select(0, back) if need_e0 else None
        ctx.grads, ctx.batch = (grad_vals, grad_w, grad_e0), e0.shape[0]
        decoded = decoded.index_select(0, back)
        ctx.mark_non_differentiable(decoded)
        return loss / e0.shape[0], decoded

    @staticmethod
    @_fp32_backward
    def backward(ctx: Any, grad: Tensor, _grad_decoded: Tensor) -> tuple[Tensor | None, ...]:
        scale = grad / ctx.batch
        out = tuple(None if g is None else g * scale for g in ctx.grads)
        return (*out, None, None, None)


def every_prefix_loss(e0: Tensor, codes: Codes, w_dec: Tensor,
                      cdf: Tensor) -> tuple[Tensor, Tensor]:
    """(the every-prefix loss, codes W_dec [B, d] without gradient) for e0 = y - b_dec [B, d]
    (differentiable), sparse codes (values differentiable) and w_dec [d_sae, d], with the
    cumulative prefix weights cdf [d_sae + 1] (`prefix_cdf`)."""
    codes = _sorted_by_col(codes)
    with torch.no_grad():
        cdf = cdf.to(codes.cols.device)
        tail = (cdf[-1] - cdf.index_select(0, codes.cols)).to(e0.dtype)
        counts = torch.bincount(codes.rows, minlength=codes.batch)
    return _EveryPrefix.apply(codes.vals, w_dec, e0, (codes.cols, codes.offsets, counts),
                              tail, float(cdf[-1]))


def dense_every_prefix_loss(e0: Tensor, f: Tensor, w_dec: Tensor, cdf: Tensor) -> Tensor:
    """The same loss from dense latents f [B, d_sae] by the Gram identity of the module
    docstring (the reference; differentiable by plain autograd)."""
    cdf = cdf.to(device=f.device, dtype=f.dtype)
    tail = cdf[-1] - cdf[:-1]  # [d_sae]: the weight of the prefixes that contain latent i
    gram = w_dec @ w_dec.t()
    before = f @ torch.triu(gram, diagonal=1)  # sum_{i'<i} f_i' G_i'i
    steps = f * (f * gram.diagonal() - 2.0 * (e0 @ w_dec.t()) + 2.0 * before)
    return (cdf[-1] * e0.square().sum(1) + steps @ tail).mean()
