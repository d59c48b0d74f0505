"""Laplacian eigenvector positional encodings of neural graph nodes, with a deterministic sign.

Same quantity as torch_geometric's `AddLaplacianEigenvectorPE` on the undirected graph (symmetric
normalised Laplacian, self-loops ignored, the k eigenvectors after the smallest eigenvalue), but
each vector's sign is fixed (largest-magnitude entry positive) instead of random, so a run that
rebuilds the graph after a restart gets the same encoding.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
import torch
from torch import Tensor
from torch_geometric.utils import get_laplacian, to_undirected

#: Below this many nodes a dense eigendecomposition is used (as torch_geometric does).
DENSE_THRESHOLD = 100


def laplacian_pe(edge_index: Tensor, num_nodes: int, k: int = 8) -> Tensor:
    """(num_nodes, k) float32 Laplacian eigenvector encoding of an (un)directed graph."""
    if num_nodes <= k:
        raise ValueError(f'a graph with {num_nodes} nodes has fewer than k+1={k + 1} eigenvectors')
    ei, w = get_laplacian(to_undirected(edge_index, num_nodes=num_nodes), normalization='sym',
                          num_nodes=num_nodes)
    lap = scipy.sparse.coo_matrix((w.double().numpy(), (ei[0].numpy(), ei[1].numpy())),
                                  shape=(num_nodes, num_nodes)).tocsr()
    if num_nodes < DENSE_THRESHOLD:
        vals, vecs = np.linalg.eigh(lap.toarray())
    else:
        v0 = np.linspace(1.0, 2.0, num_nodes)  # fixed start vector: reproducible across runs
        vals, vecs = scipy.sparse.linalg.eigsh(lap, k=k + 1, which='SA', v0=v0)
    vecs = vecs[:, np.argsort(vals)][:, 1:k + 1]
    signs = np.sign(vecs[np.abs(vecs).argmax(axis=0), np.arange(vecs.shape[1])])
    signs[signs == 0] = 1
    return torch.from_numpy(vecs * signs).float()
