"""`python -m bornagain_kd ...` (and `torchrun ... -m bornagain_kd ...`): the same as the `bornagain` command."""

import sys

from bornagain_kd.cli import main

sys.exit(main())
