"""``python -m capsgen`` (and ``torchrun … -m capsgen``) is the ``capsgen`` command."""
import sys

from capsgen.cli import main

sys.exit(main())
