"""A campaign's combinations as the arrays the policy kernels read.

A campaign's combinations are rows of an int32 matrix ``combo_components[n_combos, k]`` of
*component* ids, -1 padded at the end of a row. A component is one dimension value (message
3, channel "sms", …), one pairwise cell (channel × send time, message × offer) or the "send
nothing" arm, which is a combination of its own (one component, the rest padding). The
kernels never know what a component means, so they are generic over dimensions and pairs;
:func:`build_action_space` builds the standard layout.

``component_weight`` ``w`` puts combinations and the nothing arm on one scale: a
combination's score is ``Σ_{c in combo} w_c·score_c``, and the standard layout uses ``1/k``
for the ``k`` components of a combination and 1 for "nothing", so a score reads as an
expected reward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from nudge.kernels.jit import mask_array, readonly


@dataclass(frozen=True)
class ActionSpace:
    """A campaign's combinations, as arrays the kernels read (validated once, read-only).

    ``combo_components`` int32 ``[n_combos, k]`` component ids, -1 padded at row ends;
    ``combo_mask`` uint8 ``[n_combos]`` (1 = the campaign allows it); ``component_weight``
    float64 ``[n_components]``; ``kernel_components`` (derived) the same ids as uint32 with
    padding set to ``n_components``, which is what the policy kernels read.
    ``dim_sizes``/``pairs`` describe the standard layout built by
    :func:`build_action_space` (empty for a hand-built space); ``nothing_combo`` is the
    "send nothing" combination's index or -1.

    Groups (derived, standard layout only; empty otherwise): the dimensions split into
    groups no pair crosses (message × offer, channel × send time, frequency), so a
    combination's score is a sum of one *cell* score per group and the best combination
    is the best cell of each group — unless the campaign excludes it. ``cell_components``
    ``[n_cells, w]`` (uint32, padded with ``n_components``) lists each cell's components,
    ``group_start[G + 1]`` where each group's cells start, ``cell_combo`` the combination
    of every tuple of cells (C order over groups). Thompson's Monte Carlo re-draws use it.
    """

    combo_components: np.ndarray
    combo_mask: np.ndarray
    component_weight: np.ndarray
    n_components: int
    nothing_combo: int = -1
    dim_sizes: tuple[int, ...] = ()
    pairs: tuple[tuple[int, int], ...] = ()
    kernel_components: np.ndarray = field(init=False, repr=False, compare=False)
    cell_components: np.ndarray = field(init=False, repr=False, compare=False)
    group_start: np.ndarray = field(init=False, repr=False, compare=False)
    cell_combo: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        combos = np.asarray(self.combo_components)
        if combos.dtype != np.int32 or combos.ndim != 2 or combos.shape[0] < 1:
            raise ValueError("combo_components: must be a non-empty 2-D int32 array, got "
                             f"{combos.dtype} {combos.shape}")
        if self.n_components < 1:
            raise ValueError(f"n_components: must be >= 1, got {self.n_components}")
        if combos.min() < -1 or combos.max() >= self.n_components:
            raise ValueError(
                f"combo_components: ids must be -1 (padding) or in [0, {self.n_components})"
            )
        pad = combos < 0
        if (pad[:, :-1] & ~pad[:, 1:]).any():
            raise ValueError("combo_components: -1 padding must come after a row's components")
        if pad[:, 0].any():
            raise ValueError("combo_components: every combination needs at least one component")
        object.__setattr__(self, "combo_components", readonly(combos))
        # What the policy kernels read: unsigned ids, padding pointing at slot C (a 0.0).
        ids = np.where(pad, self.n_components, combos).astype(np.uint32)
        object.__setattr__(self, "kernel_components", readonly(ids))
        mask = mask_array(self.combo_mask, "combo_mask", combos.shape[0])
        if not mask.any():
            raise ValueError("combo_mask: the campaign must allow at least one combination")
        object.__setattr__(self, "combo_mask", readonly(mask))
        w = np.asarray(self.component_weight)
        if w.dtype != np.float64 or w.shape != (self.n_components,) or not np.isfinite(w).all():
            raise ValueError(f"component_weight: must be finite float64 of shape "
                             f"({self.n_components},), got {w.dtype} {w.shape}")
        object.__setattr__(self, "component_weight", readonly(w))
        if not -1 <= self.nothing_combo < combos.shape[0]:
            raise ValueError(f"nothing_combo: must be -1 or a combination index, "
                             f"got {self.nothing_combo}")
        cells, starts, cell_combo = _groups(self.dim_sizes, self.pairs, self.n_components)
        object.__setattr__(self, "cell_components", readonly(cells))
        object.__setattr__(self, "group_start", readonly(starts))
        object.__setattr__(self, "cell_combo", readonly(cell_combo))

    @property
    def n_combos(self) -> int:
        return int(self.combo_components.shape[0])

    def combo_values(self, combo: int) -> tuple[int, ...] | None:
        """Each dimension's value index for a standard-layout combination; None = nothing."""
        if combo == self.nothing_combo:
            return None
        return tuple(int(v) for v in np.unravel_index(combo, self.dim_sizes))

    def combo_index(self, values: Sequence[int]) -> int:
        """Inverse of :meth:`combo_values`."""
        return int(np.ravel_multi_index(tuple(values), self.dim_sizes))

    def component_of(self, dim: int, value: int) -> int:
        """Component id of one dimension value (standard layout)."""
        if not (0 <= dim < len(self.dim_sizes) and 0 <= value < self.dim_sizes[dim]):
            raise ValueError(f"dim, value: out of range for dim_sizes {self.dim_sizes}")
        return int(sum(self.dim_sizes[:dim]) + value)

    def components_of_dim(self, dim: int) -> np.ndarray:
        """Component ids of every value of one dimension (for guardrail component masks)."""
        start = self.component_of(dim, 0)
        return np.arange(start, start + self.dim_sizes[dim])


def _groups(
    sizes: tuple[int, ...], pairs: tuple[tuple[int, int], ...], n_components: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The standard layout's groups (see :class:`ActionSpace`); empty arrays without one."""
    if not sizes:
        return (np.zeros((0, 1), dtype=np.uint32), np.zeros(0, dtype=np.int64),
                np.zeros(0, dtype=np.int64))
    n_dims = len(sizes)
    group = list(range(n_dims))  # union-find over dimensions joined by pairs
    for a, b in pairs:
        ga, gb = group[a], group[b]
        group = [ga if g == gb else g for g in group]
    members = [[d for d in range(n_dims) if group[d] == g] for g in sorted(set(group))]
    dim_offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    pair_offsets, off = [], int(sum(sizes))
    for a, b in pairs:
        pair_offsets.append(off)
        off += sizes[a] * sizes[b]
    rows, starts, values = [], [0], []
    for dims in members:
        for cell in np.ndindex(*(sizes[d] for d in dims)):
            v = dict(zip(dims, cell, strict=True))
            comps = [int(dim_offsets[d] + v[d]) for d in dims]
            comps += [po + v[a] * sizes[b] + v[b] for (a, b), po in
                      zip(pairs, pair_offsets, strict=True) if a in v and b in v]
            rows.append(comps)
            values.append(v)
        starts.append(len(rows))
    width = max(len(r) for r in rows)
    cells = np.full((len(rows), width), n_components, dtype=np.uint32)
    for i, r in enumerate(rows):
        cells[i, : len(r)] = r
    counts = [starts[g + 1] - starts[g] for g in range(len(members))]
    cell_combo = np.empty(int(np.prod(counts)), dtype=np.int64)
    for flat, local in enumerate(np.ndindex(*counts)):
        dim_values = [0] * n_dims
        for g, c in enumerate(local):
            for d, val in values[starts[g] + c].items():
                dim_values[d] = val
        cell_combo[flat] = np.ravel_multi_index(tuple(dim_values), sizes)
    return cells, np.array(starts, dtype=np.int64), cell_combo


def build_action_space(
    dim_sizes: Sequence[int],
    pairs: Sequence[tuple[int, int]] = (),
    include_nothing: bool = True,
    allowed: np.ndarray | None = None,
) -> ActionSpace:
    """The standard layout: every combination of the dimensions (C order, so
    ``combo = np.ravel_multi_index(values, dim_sizes)``) plus, last, "send nothing".

    Components: each dimension's values (dimension 0 first), then each pair's cells
    (``pair_offset + v_a * dim_sizes[b] + v_b``), then the nothing arm. Weights: ``1/k`` for
    the ``k`` components of a combination, 1 for nothing. ``allowed`` (bool or uint8 over the
    dimension combinations, C order) excludes combinations; nothing is always allowed.
    """
    sizes = tuple(int(s) for s in dim_sizes)
    if not sizes or min(sizes) < 1:
        raise ValueError(f"dim_sizes: needs at least one dimension, each >= 1, got {sizes}")
    pair_list = tuple((int(a), int(b)) for a, b in pairs)
    for a, b in pair_list:
        if not (0 <= a < len(sizes) and 0 <= b < len(sizes) and a != b):
            raise ValueError(f"pairs: ({a}, {b}) must name two different dimensions")
    dim_offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    n_comp = int(sum(sizes))
    pair_offsets = []
    for a, b in pair_list:
        pair_offsets.append(n_comp)
        n_comp += sizes[a] * sizes[b]
    values = np.indices(sizes).reshape(len(sizes), -1).T  # [n, n_dims], C order
    n_dim_combos = values.shape[0]
    k = len(sizes) + len(pair_list)
    cols = [values[:, j] + dim_offsets[j] for j in range(len(sizes))]
    for (a, b), off in zip(pair_list, pair_offsets, strict=True):
        cols.append(off + values[:, a] * sizes[b] + values[:, b])
    combos = np.stack(cols, axis=1).astype(np.int32)
    weight = np.full(n_comp + (1 if include_nothing else 0), 1.0 / k)
    mask = np.ones(n_dim_combos, dtype=np.uint8)
    if allowed is not None:
        mask = mask_array(allowed, "allowed", n_dim_combos).copy()
    nothing_combo = -1
    if include_nothing:
        nothing = np.full((1, k), -1, dtype=np.int32)
        nothing[0, 0] = n_comp
        weight[n_comp] = 1.0
        combos = np.concatenate([combos, nothing])
        mask = np.concatenate([mask, np.ones(1, dtype=np.uint8)])
        nothing_combo = n_dim_combos
        n_comp += 1
    return ActionSpace(combo_components=combos, combo_mask=mask, component_weight=weight,
                       n_components=n_comp, nothing_combo=nothing_combo, dim_sizes=sizes,
                       pairs=pair_list)
