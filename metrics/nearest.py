"""Nearest-neighbour work of the feature-space metrics (PRDC, memorisation, pull), on the features' device.

Distances are Euclidean, computed in float64 blocks as sqrt(|a|^2 + |b|^2 - 2 a.b) clamped at 0: float64
keeps the threshold comparisons of large-norm Inception features stable whatever the block shapes, and
a [rows, cols] block bounds the memory. Nothing here reads a value back to the host inside the loops.
"""

import torch

ROW_CHUNK = 4096    # query rows per block
COL_CHUNK = 8192    # reference rows per block: a 4096 x 8192 float64 block is 256 MiB


def check_features(x: torch.Tensor, what: str) -> torch.Tensor:
    """x as float64 [N, D] on its device, after one check that its values are finite."""
    if x.ndim != 2:
        raise ValueError(f'{what}: expected [N, D] features, got shape {list(x.shape)}')
    x = x.to(torch.float64)
    if not bool(torch.isfinite(x).all()):  # one read for the whole set
        raise ValueError(f'{what}: the features hold non-finite values (NaN or Inf); check the images and detector')
    return x


def distance_blocks(queries, refs, row_chunk=None, col_chunk=None):
    """Yield (row_start, col_start, distances [r, c] float64) covering the queries x refs matrix, row block major.

    row_chunk, col_chunk default to ROW_CHUNK and COL_CHUNK (read at call time).
    """
    row_chunk, col_chunk = row_chunk or ROW_CHUNK, col_chunk or COL_CHUNK
    ref_sq = (refs * refs).sum(dim=1)
    for r0 in range(0, queries.shape[0], row_chunk):
        q = queries[r0:r0 + row_chunk]
        q_sq = (q * q).sum(dim=1)
        for c0 in range(0, refs.shape[0], col_chunk):
            d2 = q_sq[:, None] + ref_sq[None, c0:c0 + col_chunk] - 2 * (q @ refs[c0:c0 + col_chunk].T)
            yield r0, c0, torch.sqrt(torch.clamp(d2, min=0))


def knn(queries, refs, k, exclude_self=False, row_chunk=None, col_chunk=None):
    """The k smallest distances from each query to refs, ascending, with the refs' indices.

    Args:
        queries: float64 [Q, D].
        refs: float64 [R, D] on the same device (the queries themselves when exclude_self).
        k: neighbours kept (k <= R, or R - 1 with exclude_self).
        exclude_self: skip ref i for query i (leave-one-out within one set; by index, so duplicate images
            still count as neighbours at distance 0).
        row_chunk, col_chunk: block sizes (the values do not depend on them).

    Returns:
        (distances float64 [Q, k], indices int64 [Q, k]).
    """
    best_d = torch.full([queries.shape[0], k], float('inf'), dtype=torch.float64, device=queries.device)
    best_i = torch.zeros([queries.shape[0], k], dtype=torch.int64, device=queries.device)
    for r0, c0, d in distance_blocks(queries, refs, row_chunk, col_chunk):
        rows = slice(r0, r0 + d.shape[0])
        idx = torch.arange(c0, c0 + d.shape[1], device=d.device).expand(d.shape[0], -1)
        if exclude_self:  # (a mask, not boolean indexing: that would read a count back to the host)
            own = torch.arange(r0, r0 + d.shape[0], device=d.device)
            d.masked_fill_(idx == own[:, None], float('inf'))
        # The block's k smallest, merged with the best so far; among exactly equal distances (duplicate
        # images) which index is kept is unspecified, the distances are not.
        top_d, top_j = torch.topk(d, min(k, d.shape[1]), dim=1, largest=False, sorted=True)
        cand_d = torch.cat([best_d[rows], top_d], dim=1)
        cand_i = torch.cat([best_i[rows], torch.gather(idx, 1, top_j)], dim=1)
        order = torch.sort(cand_d, dim=1, stable=True).indices[:, :k]
        best_d[rows] = torch.gather(cand_d, 1, order)
        best_i[rows] = torch.gather(cand_i, 1, order)
    return best_d, best_i


def kth_radius(x, k, row_chunk=None, col_chunk=None):
    """Distance of each row of x to its k-th nearest other row of x (the k-NN ball radius), float64 [N]."""
    return knn(x, x, k, exclude_self=True, row_chunk=row_chunk, col_chunk=col_chunk)[0][:, k - 1]
