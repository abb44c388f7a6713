"""`python -m terramind.cli`: the same as the `terramind` console script."""

import sys

from . import main

sys.exit(main())
