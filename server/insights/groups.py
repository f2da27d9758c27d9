"""Similar questions grouped, so an author reads twenty topics instead of two thousand lines.

Average-linkage agglomerative clustering of the questions' embeddings (cosine), cut where the
average similarity between two groups falls below a threshold. Hand-written in numpy (about 40
lines) because the project has no scipy or scikit-learn and this is all it would use of them:
the nearest-neighbour-chain algorithm gives the exact average-linkage tree in O(n²) time and
memory, the result does not depend on the order questions arrive in, and ties are broken by
index, so the same questions always give the same groups.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

# Measured with all-MiniLM-L6-v2 on paraphrases of the corpora's questions: rewordings of one
# question score 0.55-0.85 with each other, different questions of the same chapter 0.25-0.5.
GROUP_SIMILARITY = 0.5
MAX_EXACT = 3000  # distinct questions clustered exactly; the rest join their nearest group

Matrix = NDArray[np.float32]


def normalise_rows(vectors: Matrix) -> Matrix:
    """Unit-length rows (zero rows stay zero)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    out: Matrix = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
    return out


def average_linkage(
    vectors: Matrix, threshold: float, weights: Sequence[int] | None = None
) -> list[int]:
    """A group label per row: rows joined while the average cosine between groups is at least
    `threshold`. `weights` counts identical questions folded into one row."""
    n = len(vectors)
    if n == 0:
        return []
    x = normalise_rows(vectors).astype(np.float64)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    size = np.asarray(weights if weights is not None else [1] * n, dtype=np.float64)
    active = np.ones(n, dtype=bool)
    parent = list(range(n))
    merges: list[tuple[float, int, int]] = []
    chain: list[int] = []
    for _ in range(n - 1):
        while True:
            if not chain:
                chain.append(int(np.flatnonzero(active)[0]))
            a = chain[-1]
            row = np.where(active, sim[a], -np.inf)
            row[a] = -np.inf
            b = int(np.argmax(row))
            # a reciprocal pair (ties favour the previous link, which keeps the chain finite)
            if len(chain) > 1 and row[chain[-2]] >= row[b]:
                b = chain[-2]
                chain.pop()
                chain.pop()
                break
            chain.append(b)
        height = float(sim[a, b])
        keep, gone = min(a, b), max(a, b)
        merged = (size[keep] * sim[keep] + size[gone] * sim[gone]) / (size[keep] + size[gone])
        sim[keep, :] = merged
        sim[:, keep] = merged
        sim[keep, keep] = -np.inf
        size[keep] += size[gone]
        active[gone] = False
        sim[gone, :] = -np.inf
        sim[:, gone] = -np.inf
        merges.append((height, keep, gone))
    # Average linkage never merges above a later merge's similarity along a branch, so the
    # groups at the threshold are exactly the components of the merges at or above it.
    for height, keep, gone in merges:
        if height >= threshold:
            parent[_root(parent, gone)] = _root(parent, keep)
    roots = [_root(parent, i) for i in range(n)]
    first: dict[int, int] = {}
    return [first.setdefault(r, len(first)) for r in roots]


def _root(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def group_questions(
    texts: Sequence[str], vectors: Matrix, threshold: float = GROUP_SIMILARITY
) -> list[int]:
    """A group label per question. Identical questions (case and spacing aside) are one row;
    beyond MAX_EXACT distinct ones, the most asked are clustered exactly and each other joins the
    group whose centroid it is most similar to, or starts its own."""
    if not texts:
        return []
    keys = [" ".join(t.lower().split()) for t in texts]
    distinct: dict[str, int] = {}
    for key in keys:
        distinct.setdefault(key, len(distinct))
    counts = np.zeros(len(distinct), dtype=np.int64)
    rows = np.zeros((len(distinct), vectors.shape[1]), dtype=np.float32)
    for i, key in enumerate(keys):
        d = distinct[key]
        if counts[d] == 0:
            rows[d] = vectors[i]
        counts[d] += 1
    order = sorted(range(len(distinct)), key=lambda d: (-counts[d], d))
    exact = order[:MAX_EXACT]
    labels_exact = average_linkage(rows[exact], threshold, [int(counts[d]) for d in exact])
    label_of = dict(zip(exact, labels_exact, strict=True))
    if len(order) > MAX_EXACT:
        unit = normalise_rows(rows)
        groups = max(labels_exact) + 1
        centroids = np.zeros((groups, rows.shape[1]), dtype=np.float32)
        for d, g in label_of.items():
            centroids[g] += unit[d] * counts[d]
        centroids = normalise_rows(centroids)
        for d in order[MAX_EXACT:]:
            scores = centroids @ unit[d]
            best = int(np.argmax(scores))
            if scores[best] >= threshold:
                label_of[d] = best
            else:
                label_of[d] = groups
                centroids = np.vstack([centroids, unit[d][None, :]])
                groups += 1
    return [label_of[distinct[key]] for key in keys]
