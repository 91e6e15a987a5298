"""Reports, blocks, disputes, staff actions and each room's timeline."""
