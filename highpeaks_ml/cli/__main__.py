"""``python -m highpeaks_ml.cli`` runs the CLI."""

import sys

from highpeaks_ml.cli import main

sys.exit(main())
