"""``python -m tokenyard`` runs the ``tokenyard`` command."""

import sys

from tokenyard.cli import main

sys.exit(main())
