"""Commands this component adds to `egs-gw` (filled in by its issue)."""
COMMANDS = []
