"""``python -m bench <suite> [options]``: run one benchmark suite and print its figures."""

from __future__ import annotations

import sys

SUITES = {
    "e2e": "bench.e2e",
    "merge": "bench.merge",
    "memory": "bench.memory",
    "verify": "bench.verify",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in SUITES:
        print(f"usage: python -m bench {{{','.join(SUITES)}}} [options]", file=sys.stderr)
        return 2
    import importlib

    return int(importlib.import_module(SUITES[argv[0]]).main(argv[1:]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
