"""``python -m openami.cli``: the same as the ``openami`` command."""

from openami.cli import main

main()
