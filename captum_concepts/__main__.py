"""``python -m captum_concepts`` runs the ``captum-concepts`` command line."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
