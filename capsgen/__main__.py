"""``python -m capsgen`` (and ``torchrun … -m capsgen``) is the ``capsgen`` command."""
from capsgen.cli import entry

entry()
