"""Log-sum-exp over blocks of one matrix product, computed in row chunks.

For x of shape (B, K, E) and y of shape (B', K', E) this computes

    s[i, j] = logsumexp over (k, l) of <x[i, k], y[j, l]>

which is the reduction every mixture similarity of the form LSE_{k,l}(bias_ik + bias_jl + <u_ik, v_jl>) comes down to
once the biases are folded into two extra columns. The (B·K)×(B'·K') product is never held whole: each chunk of rows
is multiplied, reduced and dropped. For the backward pass each chunk's softmax weights are either kept (while the
whole product is within `KEEP_WEIGHTS_ELEMENTS`: one (B·K)×(B'·K') matrix held between the passes, and three products
and one exp pass in all) or recomputed there (past it: memory stays at one chunk whatever the batch, for one more
product and exp pass, four products in all).

Rows are laid out component-major (all k=0 rows, then k=1, ...) so that the reduction over (k, l) is an elementwise
max/sum across K·K' contiguous (chunk, B') slabs, which vectorises well.
"""

from __future__ import annotations

import torch
from torch import Tensor

# A chunk holds about this many elements of the (B·K)×(B'·K') product (4 Mi float32 = 16 MiB, cache-sized) ...
DEFAULT_CHUNK_ELEMENTS = 1 << 22
# ... but at least this many rows, below which the chunk's matrix products lose efficiency; so a chunk of a product
# with B'·K' = 32768 columns holds 64 MiB.
MIN_CHUNK_ROWS = 512
# See _shifted_exp_.
EXP_FLOOR = -80.0
# Keep the product's softmax weights for the backward pass (False: recompute them chunk by chunk) ...
KEEP_WEIGHTS = True
# ... while the whole (B·K)×(B'·K') product has at most this many elements (1 GiB of float32: B = 4096, K = 4).
KEEP_WEIGHTS_ELEMENTS = 1 << 28


def _chunk_rows(b: int, k: int, n_cols: int, chunk_elements: int) -> int:
    """Batch rows per chunk: about chunk_elements entries, at least MIN_CHUNK_ROWS product rows (unless
    chunk_elements itself is smaller, which tests use to force many chunks)."""
    rows = max(chunk_elements // max(n_cols, 1), min(MIN_CHUNK_ROWS, chunk_elements))
    return max(1, min(b, rows // k))


def _lse_chunk(xc: Tensor, yk: Tensor, k: int, k2: int, c: int, b2: int) -> tuple[Tensor, Tensor, Tensor]:
    """logsumexp over blocks of xc @ yk.T for one chunk; xc is (K·c, E) component-major, yk is (K'·B', E).
    Returns (the chunk's logsumexp (c, B'), exp(prod − m) as (K, c, K', B'), the sums of the latter (c, B'))."""
    prod = (xc @ yk.T).view(k, c, k2, b2)
    # Reducing one dim at a time is several times faster than amax/sum over (0, 2) at once.
    m = prod.amax(dim=2).amax(dim=0)
    _shifted_exp_(prod, m)
    total = prod.sum(dim=2).sum(dim=0)
    return m + total.log(), prod, total


def _shifted_exp_(prod: Tensor, shift: Tensor) -> Tensor:
    """exp(prod - shift) in place, with shift (c, B') broadcast over the (K, c, K', B') view.

    Arguments below EXP_FLOOR are raised to it: each such term is below 2e-35 of the largest one, far under any float
    precision, and exp of arguments that underflow takes a slow path that is several times slower.
    """
    return prod.sub_(shift[None, :, None, :]).clamp_(min=EXP_FLOOR).exp_()


class _BlockLSEMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, chunk_elements: int) -> Tensor:  # type: ignore[override]
        b, k, e = x.shape
        b2, k2, _ = y.shape
        xk = x.transpose(0, 1)  # (K, B, E), a view
        yk = y.transpose(0, 1).reshape(k2 * b2, e)  # (K'·B', E), component-major
        rows = _chunk_rows(b, k, k2 * b2, chunk_elements)
        out = x.new_empty(b, b2)
        keep = KEEP_WEIGHTS and b * k * k2 * b2 <= KEEP_WEIGHTS_ELEMENTS and any(ctx.needs_input_grad[:2])
        weights = []  # each chunk's softmax weights, d s_ij / d prod_{ik,jl}, when kept
        for i0 in range(0, b, rows):
            i1 = min(b, i0 + rows)
            xc = xk[:, i0:i1].reshape(k * (i1 - i0), e)
            out[i0:i1], exps, total = _lse_chunk(xc, yk, k, k2, i1 - i0, b2)
            if keep:
                weights.append(exps.div_(total[None, :, None, :]))
        ctx.save_for_backward(x, y, out, *weights)
        ctx.chunk_elements = chunk_elements
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # type: ignore[override]
        x, y, s, *weights = ctx.saved_tensors
        b, k, e = x.shape
        b2, k2, _ = y.shape
        need_x, need_y = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        xk = x.transpose(0, 1)
        yk = y.transpose(0, 1).reshape(k2 * b2, e)
        dxk = x.new_empty(k, b, e) if need_x else None
        dyk = torch.zeros_like(yk) if need_y else None
        rows = _chunk_rows(b, k, k2 * b2, ctx.chunk_elements)
        grad = grad.contiguous()
        buffer = x.new_empty(k * min(rows, b) * k2 * b2)  # one chunk's d s / d prod, reused: no page faults a chunk
        for n, i0 in enumerate(range(0, b, rows)):
            i1 = min(b, i0 + rows)
            c = i1 - i0
            xc = xk[:, i0:i1].reshape(k * c, e)
            dprod = buffer[: k * c * k2 * b2].view(k * c, k2 * b2)
            # d s_ij / d prod_{ik,jl} = softmax weight exp(prod - s_ij); times the incoming gradient of s_ij.
            if weights:  # kept by the forward pass
                torch.mul(weights[n], grad[None, i0:i1, None, :], out=dprod.view(k, c, k2, b2))
            else:
                torch.mm(xc, yk.T, out=dprod)
                _shifted_exp_(dprod.view(k, c, k2, b2), s[i0:i1]).mul_(grad[None, i0:i1, None, :])
            if dxk is not None:
                dxk[:, i0:i1] = (dprod @ yk).view(k, c, e)
            if dyk is not None:
                dyk.addmm_(dprod.T, xc)
        dx = dxk.transpose(0, 1) if dxk is not None else None
        dy = dyk.view(k2, b2, e).transpose(0, 1) if dyk is not None else None
        return dx, dy, None


# Up to this many component-pair products (1 MiB of float32), the plain autograd form is used.
SMALL_PRODUCT_ELEMENTS = 1 << 18


def block_lse_matmul(x: Tensor, y: Tensor, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> Tensor:
    """s[i, j] = logsumexp_{k,l} <x[i,k], y[j,l]> for x (B, K, E), y (B', K', E); returns (B, B')."""
    if x.dim() != 3 or y.dim() != 3 or x.shape[-1] != y.shape[-1]:
        raise ValueError(f"expected x (B, K, E) and y (B', K', E), got {tuple(x.shape)} and {tuple(y.shape)}")
    # Low-precision autocast would ruin the cancellation in the products the callers build (‖μ‖² + ‖μ'‖² − 2μ·μ').
    with torch.autocast(device_type=x.device.type, enabled=False):
        if x.shape[1] == 1 and y.shape[1] == 1:
            return x[:, 0] @ y[:, 0].T
        (b, k, e), (b2, k2) = x.shape, y.shape[:2]
        if b * k * b2 * k2 <= min(chunk_elements, SMALL_PRODUCT_ELEMENTS):
            # a training batch: plain autograd, whose few large ops beat the chunked loop's many small ones
            products = (x.reshape(b * k, e) @ y.reshape(b2 * k2, e).T).reshape(b, k, b2, k2)
            return products.permute(0, 2, 1, 3).reshape(b, b2, k * k2).logsumexp(-1)
        return _BlockLSEMatmul.apply(x, y, int(chunk_elements))
