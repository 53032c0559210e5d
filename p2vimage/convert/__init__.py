"""Stage 3, convert: make an image boot as a KVM guest, offline (libguestfs)."""
