"""Reading a guest: file views (local tree, debugfs, the libguestfs appliance) and the one
record of facts about it."""
