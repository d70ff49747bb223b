"""`python -m lfm2engine.specdecode`: the speculative decoding CLI (specdecode.command)."""

import sys

from .command import main

sys.exit(main())
