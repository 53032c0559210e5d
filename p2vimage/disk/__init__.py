"""The raw image as bytes: MBR, ext2/3/4 through debugfs, loop mounts, the state file."""
