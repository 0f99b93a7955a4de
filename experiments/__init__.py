"""Scripts run as ``python -m experiments.<name>``."""
