"""This machine: the one subprocess wrapper, the accelerator probe, doctor."""
