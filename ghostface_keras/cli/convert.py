"""`ghostface-convert IN.h5 OUT.keras`: convert an official GhostFaceNets Keras-2 checkpoint and self-check it.

Exit status follows `ghostface_keras.cli`: 0 converted (the reloaded file reproduces the converted model to
1e-5), 1 the reload self-check failed, 2 bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ghostface_keras.cli import EXIT_CHECK_FAILED, import_backend_quietly, run_reporting_errors

SELF_CHECK_TOLERANCE = 1e-5


def main(argv: Sequence[str] | None = None) -> int:
    """Convert, write atomically, reload and compare.

    Example:
        >>> main(["GN_W0.5_S2_ArcFace_epoch16.h5", "gn_w05.keras"])  # doctest: +SKIP
        variant: GhostFaceNetV1-0.5-2 (...)
        wrote gn_w05.keras; reload self-check max abs difference: 0
        0
    """
    parser = argparse.ArgumentParser(prog="ghostface-convert", description="Convert an official GhostFaceNets "
                                     "Keras-2 .h5 file to a Keras 3 .keras model.")
    parser.add_argument("source", help="official .h5 file (full-model save)")
    parser.add_argument("destination", help="output .keras file")
    args = parser.parse_args(argv)

    def work() -> int:
        from ghostface_keras.core.files import check_input_paths, check_output_path

        check_input_paths([(args.source, "file")])
        check_output_path(args.destination)
        import_backend_quietly()
        from ghostface_keras.models.official import convert_file

        variant, difference = convert_file(args.source, args.destination)
        print(f"variant: {variant.name} (use_bias={variant.use_bias}, scale={variant.scale}, "
              f"embedding={variant.embedding_size}, se_gate={variant.se_gate}, bn_epsilon={variant.bn_epsilon:g})")
        print(f"wrote {args.destination}; reload self-check max abs difference: {difference:.3g}")
        return 0 if difference < SELF_CHECK_TOLERANCE else EXIT_CHECK_FAILED

    return run_reporting_errors("ghostface-convert", work)

if __name__ == "__main__":
    sys.exit(main())
