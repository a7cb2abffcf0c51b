"""dcsweep.search_spaces: built-in sweep definitions (YAML package data). Arrives with the sweep
runner."""
