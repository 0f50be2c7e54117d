"""``python -m mriflow`` runs the ``mriflow`` command."""

from mriflow.cli import run

run()
