"""``python -m camb_async.cli``: the ``camb-async`` command."""

import sys

from . import main

sys.exit(main())
