"""``python -m ibprune``: the ``ibprune`` command, also as ``torchrun -m ibprune ...``."""

import sys

from ibprune.cli import main

sys.exit(main())
