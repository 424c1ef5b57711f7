"""``python -m isorun``: the command-line client, as the ``isorun`` script (see ``--help``)."""
import sys

from ._cli import main

sys.exit(main())
