"""Result tables: rows to Markdown, CSV and JSON (evaluation, profiling, the demo)."""
from __future__ import annotations

import csv
import json
import os
from typing import Dict, Sequence


def cell_text(value) -> str:
    """None -> "-"; floats to 2 decimals (3 significant digits below 1, as GFLOPs); lists joined."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if 0 < abs(value) < 1 else f"{value:.2f}"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def markdown(header: Sequence[str], lines: Sequence[Sequence[str]], pad: bool = False) -> str:
    """A Markdown table of text cells; `pad` aligns the columns for plain-text reading."""
    widths = ([max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
              if pad else [0] * len(header))

    def line(values):
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths)) + " |"

    separator = "|" + "|".join("-" * max(w + 2, 3) for w in widths) + "|"
    return "\n".join([line(header), separator, *(line(cells) for cells in lines)])


def write_table(rows: Sequence[dict], path_prefix: str,
                kinds: Sequence[str] = ("md", "csv", "json")) -> Dict[str, str]:
    """Writes rows as `<prefix>.md`, `<prefix>.csv` and `<prefix>.json` (those in `kinds`)."""
    os.makedirs(os.path.dirname(os.path.abspath(path_prefix)), exist_ok=True)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    paths = {kind: f"{path_prefix}.{kind}" for kind in kinds}
    if "json" in paths:
        with open(paths["json"], "w") as handle:
            json.dump(list(rows), handle, indent=1)
    if "csv" in paths:
        with open(paths["csv"], "w", newline="") as handle:
            writer = csv.DictWriter(handle, columns)
            writer.writeheader()
            writer.writerows([{k: cell_text(row.get(k)) for k in columns} for row in rows])
    if "md" in paths:
        with open(paths["md"], "w") as handle:
            handle.write(markdown(columns, [[cell_text(row.get(k)) for k in columns]
                                            for row in rows]) + "\n")
    return paths
