"""``python -m ghostface_keras.export``: see `ghostface_keras.export.cli`."""

import sys

from ghostface_keras.export.cli import main

sys.exit(main())
