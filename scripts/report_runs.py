"""Tabulate evaluation return against environment steps and wall time for a few run directories.

    python scripts/report_runs.py runs/dreamer-s0 runs/dreamer-s1 runs/dreamer-s2 \
        --minutes 5 10 15 20 --expert 189.1 --plot docs/img/dreamer_reach.png

For each run and each wall-time mark: the last evaluation made before that mark (its env step and
mean return over its episodes), then the mean +- std over runs, as a fraction of ``--expert`` too.
"""

from __future__ import annotations

import argparse

import numpy as np

from coworld.run.plots import read_metrics
from coworld.eval.report import plot_comparison


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--minutes", type=float, nargs="+", default=[5, 10, 15, 20])
    p.add_argument("--expert", type=float, help="expert return, to print fractions")
    p.add_argument("--key", default="eval/return")
    p.add_argument("--plot", help="write return-vs-steps curves (mean +- std over runs) here")
    args = p.parse_args()
    table = {}
    for run in args.runs:
        rows = read_metrics(run)
        t0 = rows[0]["time"]
        evals = [(r["time"] - t0, r["step"], r[args.key]) for r in rows if args.key in r]
        table[run] = [max((e for e in evals if e[0] <= m * 60), default=None) for m in args.minutes]
    print(f"{'minutes':>8} | " + " | ".join(f"{run:>28}" for run in args.runs) + " | mean +- std")
    for i, m in enumerate(args.minutes):
        cells, values = [], []
        for run in args.runs:
            e = table[run][i]
            cells.append(f"{'-':>28}" if e is None else f"step {e[1]:>6}, return {e[2]:6.1f}".rjust(28))
            if e is not None:
                values.append(e[2])
        summary = f"{np.mean(values):.1f} +- {np.std(values):.1f}" if values else "-"
        if values and args.expert:
            summary += f" ({np.mean(values) / args.expert:.0%} of expert)"
        print(f"{m:>8g} | " + " | ".join(cells) + f" | {summary}")
    if args.plot:
        print(plot_comparison({"runs": args.runs}, args.plot, key=args.key))


if __name__ == "__main__":
    main()
