"""`python eval.py ...`: the `ghostface-eval` command, kept at the project root (see ghostface_keras/cli/evaluate.py)."""

import sys

from ghostface_keras.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
