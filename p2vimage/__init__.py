"""p2vimage: move legacy Linux servers into OpenStack images with a short, reversible cutover."""

__version__ = "0.1.0"
