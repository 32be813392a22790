"""The standard action-space layout and the checks every ActionSpace passes."""

from __future__ import annotations

import numpy as np
import pytest

from nudge.kernels.action_space import ActionSpace, build_action_space


def test_build_action_space_layout() -> None:
    space = build_action_space((3, 4, 2), pairs=((0, 2),))
    assert space.n_combos == 3 * 4 * 2 + 1
    assert space.n_components == 3 + 4 + 2 + 3 * 2 + 1
    assert space.combo_components.shape == (space.n_combos, 4)
    for combo in range(space.n_combos - 1):
        values = space.combo_values(combo)
        assert space.combo_index(values) == combo
        m, c, s = values
        expected = [m, 3 + c, 7 + s, 9 + m * 2 + s]
        assert space.combo_components[combo].tolist() == expected
    assert space.combo_values(space.nothing_combo) is None
    assert space.combo_components[space.nothing_combo].tolist() == [15, -1, -1, -1]
    assert space.component_weight[15] == 1.0
    assert np.allclose(space.component_weight[:15], 0.25)
    assert space.components_of_dim(1).tolist() == [3, 4, 5, 6]


def test_validation_errors() -> None:
    with pytest.raises(ValueError, match="combo_mask: the campaign must allow"):
        build_action_space((2, 2), include_nothing=False, allowed=np.zeros(4, bool))
    with pytest.raises(ValueError, match="padding"):
        ActionSpace(combo_components=np.array([[-1, 0]], dtype=np.int32),
                    combo_mask=np.ones(1, np.uint8), component_weight=np.ones(1),
                    n_components=1)
