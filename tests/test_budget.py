"""Location budgets: parsing, totals, levels and the checks every entry point shares."""
import pytest

from tnet_tf import budget


def test_parse_and_parse_sized():
    assert budget.parse("2,1") == (2, 1)
    assert budget.parse("0") == (0,)
    assert budget.parse_sized("448:2; 896:2,1;;3") == [(448, (2,)), (896, (2, 1)), (None, (3,))]
    for bad, message in (("2,x", "not a comma list"), ("2,-1", "negative"), ("", "comma list")):
        with pytest.raises(ValueError, match=message):
            budget.parse(bad)
    with pytest.raises(ValueError, match="input size 'big'"):
        budget.parse_sized("big:2")
    with pytest.raises(ValueError, match="must be >= 1"):
        budget.parse_sized("0:2")


def test_totals_and_levels():
    assert [budget.total_locations(b) for b in ((2,), (2, 1), (2, 2), (0,), (1, 1, 2))] == \
        [2, 4, 6, 0, 4]                                   # Table 2: [2, 1] attends 4
    assert [budget.levels_needed(b) for b in ((0,), (2,), (2, 1), (3, 0))] == [1, 2, 3, 2]


def test_reachable_levels_and_smallest_size():
    assert budget.reachable_levels(448, 224, 0.5) == 2
    assert budget.reachable_levels(896, 224, 0.5) == 3
    assert budget.reachable_levels(224, 224, 0.5) == 1
    # 3 levels of 50 % cells at a 224 px base need images larger than 448 px.
    assert budget.smallest_size(3, 224, 0.5) == 448
    assert budget.reachable_levels(448, 224, 0.5) < 3 <= budget.reachable_levels(449, 224, 0.5)


def test_checks_name_the_level_and_the_sizes():
    assert budget.check([2, 1], grid_size=3) == (2, 1)
    with pytest.raises(ValueError, match="level 2 asks for 10 locations; a 3x3 grid has 9"):
        budget.check((10,), grid_size=3)
    with pytest.raises(ValueError, match="level 3 cannot attend cells when level 2 attends none"):
        budget.check((0, 1), grid_size=3)
    budget.check_reachable((2, 1), 896, 224, 0.5)
    with pytest.raises(ValueError, match=r"448 px reaches 2 level\(s\); locations \[2, 1\] need 3"):
        budget.check_reachable((2, 1), 448, 224, 0.5)
