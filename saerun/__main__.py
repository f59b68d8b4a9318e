"""`python -m saerun ...` is the `saerun` command (for environments without the console script)."""

import sys

from saerun.cli import main

sys.exit(main())
