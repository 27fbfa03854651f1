"""``python -m dev.demo [--orgs N] [--fresh]``: the README's first command (``scripts/demo.sh``)."""

from __future__ import annotations

import sys

from dev.demo import run_demo
from orchestration import cli_errors


def main(argv: list[str] | None = None) -> int:
    return cli_errors.run("demo", lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    parser = cli_errors.OneLineArgumentParser(prog="python -m dev.demo", description=__doc__)
    parser.add_argument(
        "--orgs",
        type=cli_errors.bounded_number(1, 10_000, unit="orgs", integer=True),
        default=25,
        help="active orgs seeded in the sandbox",
    )
    parser.add_argument("--fresh", action="store_true", help="forget the previous demo's state")
    args = parser.parse_args(argv)
    return run_demo(orgs=args.orgs, fresh=args.fresh)


if __name__ == "__main__":
    sys.exit(main())
