"""Sparse training kernels: a step that touches only the latents that fire.

A dense SAE step is six products of B x d_in x d_sae (encoder and decoder forward, and their
gradients). When each token fires few latents, five of them are wasted on zeros. Here the
latents of a batch are held as `Codes` (for token b, latents cols[offsets[b]:offsets[b+1]] with
values vals[...]: the "bag" layout of `embedding_bag`), and:

- `decode`: x_hat = embedding_bag(cols, W_dec, offsets, per_sample_weights=vals) + b_dec; its
  backward is W_dec's gradient F^T g as a sparse-dense product (F the codes as a CSR matrix:
  the bag layout is already one) and the values' gradient as (g W_dec^T) sampled at F's entries
  (`sampled_addmm`), each O(nnz * d_in) instead of O(B * d_sae * d_in);
- `gather_linear`: the encoder pre-activations at the fired latents, pre[b, j] = x_c[b] .
  W_enc[:, j] + b_enc[j], read from the dense forward (which has to be computed anyway, to
  choose the latents) with a backward in O(nnz * d_in): W_enc's gradient x_c^T G with G the
  gradient as a sparse matrix, x_c's gradient a sum of W_enc columns per token.

So a step costs one dense product (the encoder forward) plus O(nnz * d_in). The results equal
the dense reference (`SAE.sparse_kernels = False`) up to float summation order; tests check it
for every architecture, values and gradients.

Correctness condition, stated once: gradients reach the pre-activations only at the fired
latents. That holds for every architecture using these kernels: TopK / BatchTopK selection and
ReLU have zero derivative wherever the latent is zero (the AuxK term has its own codes).
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

# torch warns on every CSR construction that the layout is "in beta"; these kernels are tested.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")


class Codes(NamedTuple):
    """The latents of a batch of B tokens, sparse: token b fires cols[offsets[b]:offsets[b+1]]
    (rows[e] = the token of entry e) with values vals (>= 0; an entry may hold a 0)."""

    cols: Tensor  # [nnz] long
    vals: Tensor  # [nnz]
    rows: Tensor  # [nnz] long, non-decreasing
    offsets: Tensor  # [B] long
    d_sae: int

    @property
    def batch(self) -> int:
        return self.offsets.shape[0]

    def dense(self) -> Tensor:
        """[B, d_sae]; for tests, evaluation and debugging."""
        out = self.vals.new_zeros(self.batch, self.d_sae)
        out[self.rows, self.cols] = self.vals
        return out

    def fired(self) -> Tensor:
        """[d_sae] bool: latents with a non-zero value on some token."""
        return torch.bincount(self.cols[self.vals > 0], minlength=self.d_sae) > 0

    def l0(self) -> Tensor:
        return (self.vals > 0).float().sum() / self.batch

    def with_vals(self, vals: Tensor) -> Codes:
        return self._replace(vals=vals)

    def select(self, keep: Tensor) -> Codes:
        """The entries where `keep` [nnz] bool is True, in bag layout."""
        rows = self.rows[keep]
        return Codes(self.cols[keep], self.vals[keep], rows, offsets(rows, self.batch),
                     self.d_sae)


def offsets(rows: Tensor, batch: int) -> Tensor:
    """Bag offsets of entries sorted by row: where each token's entries start (length B)."""
    counts = torch.bincount(rows, minlength=batch)
    return torch.cumsum(counts, 0) - counts


def row_topk(pre: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """(rows, cols, offsets) of each token's k largest pre-activations: k entries per token."""
    batch = pre.shape[0]
    cols = pre.topk(k, dim=-1, sorted=False).indices.flatten()
    rows = torch.arange(batch, device=pre.device).repeat_interleave(k)
    return rows, cols, torch.arange(batch, device=pre.device) * k


def flat_topk(scores: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """(rows, cols), sorted by row, of the n largest entries of scores [B, d_sae]: the same set
    as scores.flatten().topk(n) (ties aside), found without sorting all B * d_sae entries. A
    threshold from a strided sample keeps a candidate set a little larger than n (checked, with
    the full top-k as the fallback), and the exact top-n is taken among the candidates."""
    flat = scores.flatten()
    total = flat.numel()
    if n >= total:
        idx = torch.arange(total, device=flat.device)
    else:
        found: Tensor | None = None
        stride = max(1, total // 65536)
        sample = flat[::stride]
        # The sample quantile at a 20% larger fraction than n / total, floored.
        want = min(1.0, 1.2 * n / total + 4.0 / sample.numel())
        if want < 1.0:
            cut = sample.kthvalue(max(1, int((1.0 - want) * sample.numel()))).values
            cand = (flat >= cut).nonzero().squeeze(1)
            if cand.numel() >= n:  # exact: every entry above the n-th largest is a candidate
                found = cand[flat[cand].topk(n, sorted=False).indices]
        if found is None:
            found = flat.topk(n, sorted=False).indices
        idx = found.sort().values
    d_sae = scores.shape[1]
    return idx // d_sae, idx % d_sae


def where(mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(rows, cols, offsets) of the True entries of mask [B, d_sae], in bag layout."""
    rows, cols = mask.nonzero().unbind(1)  # row-major order: sorted by row
    return rows, cols, offsets(rows, mask.shape[0])


def _csr(offsets: Tensor, cols: Tensor, vals: Tensor, shape: tuple[int, int]) -> Tensor:
    """The [B, d_sae] CSR matrix of the entries (offsets, cols) with values vals: the bag
    layout already is one."""
    crow = torch.cat([offsets, offsets.new_full((1,), cols.numel())])
    return torch.sparse_csr_tensor(crow, cols, vals, shape, check_invariants=False)


def _csr_t(rows: Tensor, cols: Tensor, vals: Tensor, shape: tuple[int, int]) -> Tensor:
    """The transpose [d_sae, B] of `_csr`, built by one argsort of the columns (torch's own
    CSR transpose sorts far more slowly on the CPU)."""
    perm = cols.argsort(stable=True)  # stable: the same summation order in every process
    counts = torch.bincount(cols, minlength=shape[1])
    ccol = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
    return torch.sparse_csr_tensor(ccol, rows[perm], vals[perm], (shape[1], shape[0]),
                                   check_invariants=False)


# Under autocast (train.precision bf16) these kernels run in fp32, autocast off inside: they are
# CPU-only (`SAE.use_sparse`), where bf16 buys no speed, and their index/scatter ops would
# otherwise meet a mix of bf16 and fp32 operands. Without autocast the decorators do nothing.
_fp32_forward = torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
_fp32_backward = torch.amp.custom_bwd(device_type="cpu")


class _GatherLinear(torch.autograd.Function):
    """vals[e] = pre[rows[e], cols[e]] for pre = x_c W_enc + b_enc, given the dense pre
    (computed without grad), with a backward in O(nnz * d_in). With `centre` (x_c = x - centre
    for data x), centre's gradient is -(sum of the entries' gradients per latent) W_enc^T, one
    matrix-vector product, instead of a [B, d_in] gradient for x_c."""

    @staticmethod
    @_fp32_forward
    def forward(ctx: Any, x_c: Tensor, w_enc: Tensor, b_enc: Tensor, pre: Tensor,
                codes_idx: tuple[Tensor, Tensor, Tensor], centre: Tensor | None) -> Tensor:
        rows, cols, offsets = codes_idx
        ctx.save_for_backward(x_c, w_enc, rows, cols, offsets)
        return pre[rows, cols]

    @staticmethod
    @_fp32_backward
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x_c, w_enc, rows, cols, offsets = ctx.saved_tensors
        grad_x = grad_w = grad_b = grad_centre = None
        if ctx.needs_input_grad[1]:  # d/dW_enc = x_c^T G, G = grad as a sparse [B, d_sae]
            g_t = _csr_t(rows, cols, grad, (x_c.shape[0], w_enc.shape[1]))
            grad_w = (g_t @ x_c).t()
        if ctx.needs_input_grad[0]:  # d/dx_c = G W_enc^T: a sum of W_enc columns per token
            grad_x = F.embedding_bag(cols, w_enc.t().contiguous(), offsets, mode="sum",
                                     per_sample_weights=grad)
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[5]:
            per_latent = _scatter_sum(cols, grad, w_enc.shape[1])
            grad_b = per_latent if ctx.needs_input_grad[2] else None
            if ctx.needs_input_grad[5]:
                grad_centre = -(per_latent @ w_enc.t())
        return grad_x, grad_w, grad_b, None, None, grad_centre


class _Decode(torch.autograd.Function):
    """x_hat = F W_dec for sparse F (values vals at (offsets, cols)): forward by embedding_bag,
    backward d/dW_dec = F^T g (a sparse product) and d/dvals = (g W_dec^T) sampled at F's
    entries (sampled_addmm), both in O(nnz * d_in)."""

    @staticmethod
    @_fp32_forward
    def forward(ctx: Any, vals: Tensor, w_dec: Tensor, rows: Tensor, cols: Tensor,
                offsets: Tensor) -> Tensor:
        ctx.save_for_backward(vals, w_dec, rows, cols, offsets)
        return F.embedding_bag(cols, w_dec, offsets, mode="sum", per_sample_weights=vals)

    @staticmethod
    @_fp32_backward
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        vals, w_dec, rows, cols, offsets = ctx.saved_tensors
        shape = (grad.shape[0], w_dec.shape[0])
        grad_vals = grad_w = None
        if ctx.needs_input_grad[0]:
            pattern = _csr(offsets, cols, vals, shape)
            grad_vals = torch.sparse.sampled_addmm(pattern, grad, w_dec.t(), beta=0.0).values()
        if ctx.needs_input_grad[1]:
            grad_w = _csr_t(rows, cols, vals, shape) @ grad
        return grad_vals, grad_w, None, None, None


class _Linear(torch.autograd.Function):
    """pre = x_c W + b, given pre already computed without grad: the dense backward, without a
    second forward (the density check that chose the dense path computed it). With `centre`
    (x_c = x - centre for data x), centre's gradient -sum_b g_b W^T is one matrix-vector
    product: no [B, d_in] gradient for x_c, a product as large as the forward's."""

    @staticmethod
    @_fp32_forward
    def forward(ctx: Any, x_c: Tensor, w: Tensor, b: Tensor, pre: Tensor,
                centre: Tensor | None) -> Tensor:
        ctx.save_for_backward(x_c, w)
        return pre

    @staticmethod
    @_fp32_backward
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x_c, w = ctx.saved_tensors
        grad_x = grad @ w.t() if ctx.needs_input_grad[0] else None
        grad_w = x_c.t() @ grad if ctx.needs_input_grad[1] else None
        per_latent = grad.sum(0)
        grad_b = per_latent if ctx.needs_input_grad[2] else None
        grad_centre = -(per_latent @ w.t()) if ctx.needs_input_grad[4] else None
        return grad_x, grad_w, grad_b, None, grad_centre


def linear(x_c: Tensor, w: Tensor, b: Tensor, pre: Tensor,
           centre: Tensor | None = None) -> Tensor:
    """x_c W + b with gradients, its value `pre` (computed without grad) reused. `centre`:
    the b_dec of x_c = x - b_dec, for a batch x that needs no gradient; b_dec then gets its
    gradient as a matrix-vector product (one of the dense step's six products saved)."""
    if centre is not None:
        x_c = x_c.detach()
    return _Linear.apply(x_c, w, b, pre.detach(), centre)


def _scatter_sum(index: Tensor, values: Tensor, size: int) -> Tensor:
    """out[j] = sum of values[e] with index[e] = j, in entry order (bincount is a serial loop on
    the CPU; index_add_ and index_put_ may split the sum across threads, so their bits can
    change from run to run)."""
    return torch.bincount(index, weights=values, minlength=size).to(values.dtype)


class _Take(torch.autograd.Function):
    """values[index] whose backward sums into values deterministically (`_scatter_sum`)."""

    @staticmethod
    @_fp32_forward
    def forward(ctx: Any, values: Tensor, index: Tensor) -> Tensor:
        ctx.save_for_backward(index)
        ctx.size = values.shape[0]
        return values[index]

    @staticmethod
    @_fp32_backward
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (index,) = ctx.saved_tensors
        return _scatter_sum(index, grad, ctx.size), None


def take(values: Tensor, index: Tensor) -> Tensor:
    """values[index] for a per-latent vector [d_sae] and entries' latents [nnz], with a
    bit-reproducible backward: use it for every per-latent parameter read at the entries."""
    return _Take.apply(values, index)


def gather_linear(x_c: Tensor, w_enc: Tensor, b_enc: Tensor, pre: Tensor, rows: Tensor,
                  cols: Tensor, offsets: Tensor, centre: Tensor | None = None) -> Tensor:
    """The pre-activations at (rows, cols), differentiable in x_c, W_enc and b_enc; with
    `centre` (the b_dec of x_c = x - b_dec, for a batch x that needs no gradient), in b_dec
    through a matrix-vector product instead of through x_c."""
    if centre is not None:
        x_c = x_c.detach()
    return _GatherLinear.apply(x_c, w_enc, b_enc, pre.detach(), (rows, cols, offsets), centre)


def decode(codes: Codes, w_dec: Tensor) -> Tensor:
    """codes W_dec (no bias): [B, d_in], differentiable in the values and in w_dec."""
    return _Decode.apply(codes.vals, w_dec, codes.rows, codes.cols, codes.offsets)


# Above this fraction of non-zero latents a sparse step costs more than the dense one. Measured
# for relu on 2 CPU cores at d_in 512, d_sae 4096, batch 4096 (tests/../bench): the sparse
# step was 2.1x faster at 1-4% density, 1.2x at 8%.
MAX_DENSITY = 0.08


def count(mask: Tensor) -> int:
    """The True entries of a mask, for the density decisions below: a float32 sum, exact up to
    2^24 entries and within rounding beyond (a bool -> int64 reduction, `mask.sum()`, is 5x
    slower on the CPU: ~40 ms for a 4096 x 4096 mask, a sixth of a sparse step)."""
    return int(mask.sum(dtype=torch.float32))


def pays(nnz: int, mask: Tensor) -> bool:
    """Whether a step on nnz of mask.numel() entries should run on the sparse kernels."""
    return nnz <= MAX_DENSITY * mask.numel()


PROBE_ROWS = 256  # tokens of a (shuffled) batch whose density predicts the whole batch's


def probably_dense(pre: Tensor, threshold: Tensor | float) -> bool:
    """Whether (pre > threshold) is clearly too dense for the sparse kernels, judged on the
    first PROBE_ROWS tokens, so a dense step skips building the full mask (training batches
    are shuffled, so any rows are a fair sample; twice the limit leaves room for noise)."""
    probe = pre[:PROBE_ROWS]
    threshold = threshold if isinstance(threshold, float) else threshold.to(pre.dtype)
    return count(probe > threshold) > 2 * MAX_DENSITY * probe.numel()
