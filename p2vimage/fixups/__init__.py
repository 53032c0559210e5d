"""Offline fixups, one module per concern. Each ``plan`` reads guest files through a FileView
and returns the edits and bootloader actions it wants; nothing here writes. ``convert``
applies the plans, so ``--dry-run`` can show them as diffs and unit tests can feed real file
texts."""
