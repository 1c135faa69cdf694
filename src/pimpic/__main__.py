"""``python -m pimpic ...`` and ``torchrun ... -m pimpic pretrain ...``: the ``pimpic`` command."""

from pimpic.cli import main

main()
