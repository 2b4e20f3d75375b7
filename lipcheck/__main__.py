"""Run the CLI as ``python -m lipcheck``."""

from lipcheck.cli import main

main()
