"""`ghostface-zoo`: the model-zoo table (params, MFLOPs, reported accuracy, released weights).

Exit status follows `ghostface_keras.cli` (2: no model matches the pattern).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ghostface_keras.cli import EXIT_BAD_INPUT, import_backend_quietly


def main(argv: Sequence[str] | None = None) -> int:
    """Print the zoo (as a Markdown table with `--markdown`, as in the README).

    Example:
        >>> main(["MMobileFaceNet", "--markdown"])
        | name | params | MFLOPs | input | reported | weights |
        | --- | --- | --- | --- | --- | --- |
        | MMobileFaceNet | 2,072,960 | ... | 112x112x3 | - | - |
        0
    """
    parser = argparse.ArgumentParser(prog="ghostface-zoo", description="Print the ghostface_keras model zoo.")
    parser.add_argument("pattern", nargs="?", default="", help="only models whose name contains this")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table (as in the README)")
    args = parser.parse_args(argv)
    import_backend_quietly()
    from ghostface_keras.models.registry import list_models, model_zoo_table
    from ghostface_keras.core.tables import markdown_table, text_table

    names = list_models(args.pattern)
    if not names:
        print(f"ghostface-zoo: error: no model matches {args.pattern!r}", file=sys.stderr)
        return EXIT_BAD_INPUT
    rows = model_zoo_table(names)
    print(markdown_table(rows, digits=1, thousands=True) if args.markdown else text_table(rows, digits=1), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
