"""``python -m p2vimage``."""

from p2vimage.cli.main import main

main()
