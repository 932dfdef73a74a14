"""One recipe setting, trained for a budget and scored on the learning benchmark's held-out data (a sweep's step).

    python benchmarks/recipe_sweep.py vit-mnist 2 w128 '{"learning_rate": 1e-3, "mixup": 0.8}'

Runs the recipe (`flaxen.recipes.RECIPES[...]`, so with the CLI's defaults) with the JSON keyword arguments over
them and a minutes budget, and prints one JSON line: held-out value, steps, wall seconds (data loading included).
Run one at a time: the budget is wall time.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import learning

from flaxen.recipes import RECIPES

DATA_ARGUMENT = {"train-vit": "images", "pretrain-gpt": "files", "pretrain-bert": "files", "finetune-bert": "table"}


def main(journey: str, minutes: float, name: str, keywords: dict, out_root: Path = Path("/tmp/flaxen-sweep")) -> dict:
    data = learning.PREPARE[journey](learning.HERE / ".data")
    recipe = RECIPES[learning.JOURNEYS[journey].recipe]
    folder = out_root / f"{journey}-{name}"
    given = data.cli_args[1:]  # after --images/--data
    source = given if DATA_ARGUMENT[recipe.name] == "files" else given[0]
    start = time.perf_counter()
    recipe(
        out_dir=folder,
        minutes=minutes,
        overwrite=True,
        progress=False,
        **{DATA_ARGUMENT[recipe.name]: source},
        **keywords,
    )
    wall = time.perf_counter() - start
    value, details = learning.flaxen_score(journey, folder, data)
    run = json.loads((folder / "run.json").read_text())
    return {
        "journey": journey,
        "name": name,
        "minutes": minutes,
        "value": round(value, 4),
        "steps": run["budget"]["steps"],
        "wall_seconds": round(wall, 1),
        **details,
        "keywords": keywords,
    }


if __name__ == "__main__":
    row = main(sys.argv[1], float(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4]) if len(sys.argv) > 4 else {})
    print(json.dumps(row), flush=True)
