"""``python -m drasyl.agent``: the ``drasyl-agent`` command (see :mod:`drasyl.agent.cli`)."""

import sys

from .cli import main

sys.exit(main())
