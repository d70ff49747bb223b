"""`python -m lfm2engine.costs ...`: runs the costs CLI (cli.main) and exits with its status."""

import sys

from .cli import main

sys.exit(main())
