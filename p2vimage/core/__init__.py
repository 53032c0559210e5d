"""Shared by everything: errors and exit codes, logging and progress, units, paths,
atomic outputs."""
