"""Command-line tools (declared as console scripts in setup.py)."""
