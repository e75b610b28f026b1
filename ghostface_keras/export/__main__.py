"""``python -m ghostface_keras.export``: the `ghostface-export` command (`ghostface_keras.cli.export`)."""

import sys

from ghostface_keras.cli.export import main

sys.exit(main())
