"""Stage 4, smoke: boot the image under qemu, watch its console, probe services."""
