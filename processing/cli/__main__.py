"""``python -m processing.cli`` runs the ``drp`` command."""

from . import main

main()
