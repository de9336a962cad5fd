"""Run the command line as ``python -m sinkshape``."""

import sys

from sinkshape.cli import main

sys.exit(main())
