"""`archipelago localnet`: node processes, load and a live display (devnet/processes.py)."""
