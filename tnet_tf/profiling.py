"""Cost of a model at inference: the rows and table of `experiments.profile`.

The measurements live in `tnet_tf.flops` (parameters, FLOPs by eq. 11 and by
TensorFlow's profiler) and `tnet_tf.measure` (time per image, peak memory);
their public names are re-exported here, where the rest of the project
imports them from.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Sequence, Tuple

from tnet_tf import budget, tables
from tnet_tf.flops import (count_flops_eq11, count_flops_profiler, count_params,  # noqa: F401
                           graph_flops_eq11, graph_flops_profiler, inference_call,
                           op_multiplications, trace)
from tnet_tf.measure import (MEMORY_DEVICE_PEAK, MEMORY_PROCESS_RSS,  # noqa: F401
                             measure_peak_memory, measure_time)

__all__ = ["count_flops_eq11", "count_flops_profiler", "count_params", "graph_flops_eq11",
           "graph_flops_profiler", "inference_call", "op_multiplications", "trace",
           "MEMORY_DEVICE_PEAK", "MEMORY_PROCESS_RSS", "measure_peak_memory", "measure_time",
           "ProfileRow", "format_table"]


# ----------------------------------------------------------------------------
# Result rows and tables


@dataclasses.dataclass
class ProfileRow:
    """One measured configuration; None where a quantity was not measured."""

    model: str
    input_size: int
    locations: Optional[Tuple[int, ...]] = None
    glimpses: Optional[int] = None          # MGNet rows
    params: Optional[int] = None
    flops: Optional[int] = None
    flops_profiler: Optional[int] = None
    ms_per_image: Optional[float] = None
    ms_per_image_std: Optional[float] = None
    peak_memory_bytes: Optional[int] = None
    memory_method: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        row = dataclasses.asdict(self)
        if row["locations"] is not None:
            row["locations"] = list(row["locations"])
        return row


_COLUMNS = (
    ("model", "model"),
    ("input_size", "input"),
    ("locations", "locations"),
    ("glimpses", "glimpses"),
    ("params", "params (M)"),
    ("flops", "GFLOPs eq.11"),
    ("flops_profiler", "GFLOPs TF profiler"),
    ("ms_per_image", "ms/image"),
    ("peak_memory_bytes", "peak mem (GB)"),
    ("memory_method", "memory method"),
)


def _cell(row: ProfileRow, key: str) -> str:
    value = getattr(row, key)
    if value is None:
        return "-"
    if key == "locations":
        return ",".join(str(k) for k in value) + f" (total {budget.total_locations(value)})"
    if key == "params":
        return f"{value / 1e6:.2f}"
    if key in ("flops", "flops_profiler"):
        return f"{value / 1e9:.2f}"
    if key == "ms_per_image":
        std = row.ms_per_image_std
        return f"{value:.2f}" + ("" if std is None else f" ± {std:.2f}")
    if key == "peak_memory_bytes":
        return f"{value / 1e9:.2f}"
    return str(value)


def format_table(rows: Sequence[ProfileRow]) -> str:
    """A Markdown table of the rows (readable as plain text too)."""
    header = [title for _, title in _COLUMNS]
    return tables.markdown(header, [[_cell(row, key) for key, _ in _COLUMNS] for row in rows],
                           pad=True)
