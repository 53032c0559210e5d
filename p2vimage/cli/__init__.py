"""The face: the click group, its verbs, options declared once, exit codes."""
