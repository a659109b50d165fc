"""Location budgets: how many cells each level below the first attends.

A budget is a tuple (k_2, k_3, ...): level l attends k_l cells of the grid
of every level l - 1 glimpse, so (2, 1) attends 2 + 2 * 1 = 4 locations in
3 levels. Its text forms are "2,1" and, pinned to input sizes,
"448:2;896:2,1". Every check raises ValueError with a one-line reason;
the entry points prefix it with the flag that carried the budget.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

Budget = Tuple[int, ...]


def parse(text: str) -> Budget:
    """"2,1" -> (2, 1)."""
    try:
        budget = tuple(int(k) for k in text.split(","))
    except ValueError:
        raise ValueError(f"{text!r} is not a comma list of integers") from None
    if any(k < 0 for k in budget):
        raise ValueError(f"{text!r} has a negative location count")
    return budget


def parse_sized(text: str) -> List[Tuple[Optional[int], Budget]]:
    """"448:2;896:2,1" -> [(448, (2,)), (896, (2, 1))]; an unpinned budget has size None."""
    budgets = []
    for item in (part.strip() for part in text.split(";")):
        if not item:
            continue
        size = None
        if ":" in item:
            size_text, item = item.split(":", 1)
            try:
                size = int(size_text)
            except ValueError:
                raise ValueError(f"input size {size_text.strip()!r} of {text!r} is not an "
                                 f"integer") from None
            if size < 1:
                raise ValueError(f"input size {size} of {text!r} must be >= 1")
        budgets.append((size, parse(item.strip())))
    return budgets


def total_locations(budget: Sequence[int]) -> int:
    """Attended locations: (2, 1) is 2 + 2 * 1 = 4 and (2, 2) is 2 + 4 = 6, as in Table 2."""
    total, parents = 0, 1
    for k in budget:
        parents *= k
        total += parents
    return total


def levels_needed(budget: Sequence[int]) -> int:
    """Levels a budget processes: level 1 plus one per level that attends cells."""
    return 1 + sum(1 for k in budget if k > 0)


def reachable_levels(image_size: int, base_resolution: int, cell_fraction: float) -> int:
    """The number of levels an image of `image_size` px supports.

    A further level adds resolution only while the cells of the previous
    level span more input pixels than the base resolution: level l >= 2 is
    reachable when `image_size * cell_fraction ** (l - 2) > base_resolution`.
    """
    levels = 1
    while image_size * cell_fraction ** (levels - 1) > base_resolution + 1e-6:
        levels += 1
    return levels


def fit(budget: Sequence[int], levels: int) -> Budget:
    """The budget cut to `levels` levels (level 1 and `levels - 1` levels that
    attend cells): (2, 1) at 2 levels is (2,), at 1 level (0,)."""
    budget = tuple(int(k) for k in budget)
    if levels_needed(budget) <= levels:
        return budget
    return budget[:max(0, levels - 1)] or (0,)


def smallest_size(levels: int, base_resolution: int, cell_fraction: float) -> float:
    """Images must be larger than this many px to reach `levels` levels."""
    return base_resolution / cell_fraction ** (levels - 2)


def check(budget: Sequence[int], grid_size: int) -> Budget:
    """The budget as a tuple of ints, each level within its grid and no level
    attending cells below a level that attends none."""
    budget = tuple(int(k) for k in budget)
    cells = grid_size ** 2
    for level, k in enumerate(budget, start=2):
        if not 0 <= k <= cells:
            raise ValueError(f"locations: level {level} asks for {k} locations; a "
                             f"{grid_size}x{grid_size} grid has {cells} cells")
        if k and level > 2 and budget[level - 3] == 0:
            raise ValueError(f"locations {list(budget)}: level {level} cannot attend cells "
                             f"when level {level - 1} attends none")
    return budget


def check_reachable(budget: Sequence[int], image_size: int, base_resolution: int,
                    cell_fraction: float) -> None:
    """Raises when images of `image_size` px cannot reach the budget's levels."""
    levels = levels_needed(budget)
    reachable = reachable_levels(image_size, base_resolution, cell_fraction)
    if levels > reachable:
        raise ValueError(f"{image_size} px reaches {reachable} level(s); locations "
                         f"{list(budget)} need {levels}")
