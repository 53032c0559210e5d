"""Stage 1, sync: a live host's root filesystem into a local staging tree (rsync over ssh)."""
