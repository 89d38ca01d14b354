"""Estimate the GPU time of each shipped experiment file (docs/experiments.md, "Compute").

The only published figures are the paper's Table 12 (one RTX 3090, Meta-World, a coworld-official
trial): CoWorld 3,346 min, DV2 Finetune 1,933 min, Offline DV2 2,054 min. Each trial is charged the
figure of its kind, scaled by its budget against that Meta-World budget (155,000 source steps for
the co-training methods, 80,000 target updates for the offline ones). Methods the table does not
time are charged the nearest timed method's figure, named in RATE below: an estimate, not a
measurement.

    python3 scripts/experiment_compute.py            # Markdown table of every experiments/*.toml
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from coworld.run.experiment import expand, load_experiment  # noqa: E402

# minutes on one RTX 3090 at the Meta-World budget, and that budget (paper Table 12)
COWORLD, FINETUNE, OFFLINE = 3346, 1933, 2054
SOURCE_BUDGET, OFFLINE_BUDGET = 155_000, 80_000
RATE = {  # algorithm -> (minutes at the budget, budget, what the figure is)
    "coworld": (COWORLD, SOURCE_BUDGET, "Table 12"),
    "multitask-dv2": (COWORLD, SOURCE_BUDGET, "as CoWorld (one model on both domains, same updates)"),
    "dv2-finetune": (FINETUNE, SOURCE_BUDGET, "Table 12"),
    "dv2-finetune-ewc": (FINETUNE, SOURCE_BUDGET, "as DV2 Finetune"),
    "lompo-finetune": (FINETUNE, SOURCE_BUDGET, "as DV2 Finetune"),
    "offline-dv2": (OFFLINE, OFFLINE_BUDGET, "Table 12"),
    "lompo": (OFFLINE, OFFLINE_BUDGET, "as Offline DV2"),
    "drqbc": (OFFLINE, OFFLINE_BUDGET, "as Offline DV2 (no published figure; model-free updates are cheaper)"),
    "cql": (OFFLINE, OFFLINE_BUDGET, "as Offline DV2 (no published figure)"),
    "curl": (OFFLINE, OFFLINE_BUDGET, "as Offline DV2 (no published figure)"),
}


def gpu_hours(trials: list[dict]) -> float:
    total = 0.0
    for t in trials:
        minutes, budget, _ = RATE[t["algo"]]
        total += minutes * t["steps"] / budget / 60
    return total


def main() -> None:
    print("| file | trials | GPU-hours (RTX 3090, estimate) | days on 8 GPUs |")
    print("| --- | ---: | ---: | ---: |")
    for path in sorted((ROOT / "experiments").glob("*.toml")):
        trials = expand(load_experiment(path, check_data=False))
        if all(t["preset"] == "tiny" for t in trials):
            continue  # the CPU-sized files: measured, not estimated (docs/experiments.md)
        hours = gpu_hours(trials)
        print(f"| `{path.name}` | {len(trials)} | {hours:,.0f} | {hours / 8 / 24:.1f} |")


if __name__ == "__main__":
    main()
