"""`python train.py ...`: the `ghostface-train` command, kept at the project root (see ghostface_keras/cli/train.py)."""

import sys

from ghostface_keras.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
