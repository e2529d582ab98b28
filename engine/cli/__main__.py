"""`python -m engine.cli`: the `risk-engine` command."""

import sys

from engine.cli import main

sys.exit(main())
