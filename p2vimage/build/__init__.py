"""Stage 2, build: a staging tree into a raw disk image; verify and in-place refresh."""
