"""`coworld envs [--json] [--suite NAME]`: list the registered environments from their specs.

Nothing is constructed, so the listing works without MuJoCo installed.
"""

from __future__ import annotations

import json

from coworld.envs import list_specs


def register(subparsers, groups=None) -> None:
    parser = subparsers.add_parser("envs", help="list the registered environments")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.add_argument("--suite", default=None, help="only this suite (builtin, dmc, metaworld, ...)")
    parser.set_defaults(func=run)


def run(args) -> int:
    specs = list_specs(args.suite)
    if args.json:
        rows = [
            dict(id=s.id, suite=s.suite, action_dim=s.action_dim, image_shape=list(s.image_shape),
                 description=s.description)
            for s in specs
        ]
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'id':32s} {'suite':10s} {'image':10s} {'A':>2s}  description")
    for s in specs:
        shape = "x".join(str(n) for n in s.image_shape)
        extra = f"  [needs coworld[{s.extra}]]" if s.extra else ""
        print(f"{s.id:32s} {s.suite:10s} {shape:10s} {s.action_dim:2d}  {s.description}{extra}")
    return 0
