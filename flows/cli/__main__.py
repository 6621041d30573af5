"""`python -m flows.cli ...` is `ganflow ...` (how the training manager launches its attempts)."""
import sys

from flows.cli import main

sys.exit(main())
