"""Laplacian eigenvector positional encodings of neural graph nodes, with a deterministic sign.

Same quantity as torch_geometric's `AddLaplacianEigenvectorPE` on the undirected graph (symmetric
normalised Laplacian, self-loops ignored, the k eigenvectors after the smallest eigenvalue), but
each vector's sign is fixed (largest-magnitude entry positive) instead of random. Eigenvectors of
repeated eigenvalues are not unique, so the `NiNo` wrapper also keeps the encoding it used in its
state_dict, and a resumed run reuses it. Which basis of such an eigenspace comes out depends on how
many threads the BLAS runs on, so the decomposition always runs on one: the same graph gets the same
encoding in a Ray worker (started with one thread) and in a notebook (started with every core).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
import torch
from threadpoolctl import threadpool_limits
from torch import Tensor

#: Below this many nodes a dense eigendecomposition is used: exact, deterministic and fast enough.
DENSE_THRESHOLD = 2000


def laplacian_pe(edge_index: Tensor, num_nodes: int, k: int = 8) -> Tensor:
    """(num_nodes, k) float32 Laplacian eigenvector encoding of an (un)directed graph."""
    if num_nodes <= k:
        raise ValueError(f'a graph with {num_nodes} nodes has fewer than k+1={k + 1} eigenvectors')
    lap = normalized_laplacian(edge_index, num_nodes)
    with threadpool_limits(limits=1, user_api='blas'):
        if num_nodes < DENSE_THRESHOLD:
            vals, vecs = np.linalg.eigh(lap.toarray())
        else:
            vals, vecs = _sparse_smallest(lap, k + 1)
    vecs = vecs[:, np.argsort(vals)][:, 1:k + 1]
    signs = np.sign(vecs[np.abs(vecs).argmax(axis=0), np.arange(vecs.shape[1])])
    signs[signs == 0] = 1
    return torch.from_numpy(vecs * signs).float()


def normalized_laplacian(edge_index: Tensor, num_nodes: int) -> scipy.sparse.csr_matrix:
    """I - D^-1/2 A D^-1/2 of the undirected graph without self-loops, as a float64 CSR matrix.

    The values are torch_geometric's (`get_laplacian(to_undirected(...), 'sym')`, weights in
    float32), built with scipy on 32-bit indices: a 50M-edge graph needs ~3 GB instead of ~10.
    """
    index = np.int32 if num_nodes < 2 ** 31 else np.int64
    src, dst = (edge_index[i].numpy().astype(index) for i in (0, 1))
    keep = src != dst
    src, dst = src[keep], dst[keep]
    ones = np.ones(len(src), dtype=np.float32)
    adj = scipy.sparse.coo_matrix((ones, (src, dst)), shape=(num_nodes, num_nodes)).tocsr()
    del src, dst, ones, keep
    adj = adj + adj.T
    adj.data[:] = 1.0  # an edge in both directions counts once
    deg = torch.from_numpy(np.asarray(adj.sum(axis=1), dtype=np.float32).ravel())
    inv_sqrt = deg.pow(-0.5).masked_fill(deg == 0, 0).numpy()  # torch's float32 pow, as torch_geometric
    rows = np.repeat(np.arange(num_nodes, dtype=adj.indices.dtype), np.diff(adj.indptr))
    adj.data = -(inv_sqrt[rows] * inv_sqrt[adj.indices]).astype(np.float64)
    del rows
    return (adj + scipy.sparse.identity(num_nodes, dtype=np.float64, format='csr')).tocsr()


def _sparse_smallest(lap: scipy.sparse.csr_matrix, n_vecs: int) -> tuple[np.ndarray, np.ndarray]:
    """Smallest eigenpairs by ARPACK, retrying with a larger Krylov space when it stalls.

    Neural graphs have many repeated eigenvalues (interchangeable neurons), which can make
    ARPACK stop with "no shifts could be applied"; a larger `ncv` resolves it.
    """
    n = lap.shape[0]
    v0 = np.linspace(1.0, 2.0, n)  # fixed start vector: same answer on every run
    ncv = max(4 * n_vecs, 40)
    while True:
        try:
            return scipy.sparse.linalg.eigsh(lap, k=n_vecs, which='SA', v0=v0, ncv=min(ncv, n - 1))
        except (scipy.sparse.linalg.ArpackError, scipy.sparse.linalg.ArpackNoConvergence):
            if ncv >= n - 1 or ncv >= 1000:
                raise
            ncv *= 2
