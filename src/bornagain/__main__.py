"""`python -m bornagain ...` (and `torchrun ... -m bornagain ...`): the same as the `bornagain` command."""

import sys

from bornagain.cli import main

sys.exit(main())
