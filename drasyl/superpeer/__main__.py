"""``python -m drasyl.superpeer``: the same as the ``drasyl-sp`` command."""

import sys

from .cli import main

sys.exit(main())
