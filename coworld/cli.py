"""The ``coworld`` command: one entry point, one subcommand per job.

Each layer of the library owns its subcommands and adds them here through a
``register(subparsers)`` function; the handler it sets (``func``) receives the
parsed arguments and returns an exit code. Errors the user can fix are raised
as :class:`coworld.errors.UserError` and printed as one line, without a
traceback, with exit code 2; so is running out of disk space.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys

from coworld.errors import UserError

# Modules that contribute subcommands, in the order they appear in --help.
COMMAND_MODULES = [
    "coworld.envs.commands",  # envs
    "coworld.envs.doctor",  # doctor
    "coworld.data.commands",  # data make | validate | info | ...
    "coworld.run.commands",  # train, eval, bench, data collect
    "coworld.run.sweep",  # sweep (an experiment file's grid of trials)
    "coworld.eval.demo",  # demo (the embedded default job)
    "coworld.eval.sweep_report",  # report (tables and figures of a sweep directory)
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coworld",
        description="CoWorld and DreamerV2 baselines for offline visual RL.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups: dict = {}  # command groups a later (higher) layer adds to, e.g. "data" gets "collect" from run
    for name in COMMAND_MODULES:
        groups.update(importlib.import_module(name).register(sub, groups) or {})
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"coworld: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("coworld: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # Files written outside the atomic writers (logs, images): still one line, not a traceback.
        where = f" while writing {exc.filename}" if exc.filename else ""
        print(f"coworld: error: no space left on device{where}; the last checkpoint is intact; "
              "free space and re-run the same command to resume", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
