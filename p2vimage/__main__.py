"""``python -m p2vimage``."""

from p2vimage.cli import main

main()
