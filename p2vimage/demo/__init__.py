"""The built-in examples (debootstrap recipes) for demo, tests and benches."""
