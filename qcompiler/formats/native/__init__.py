"""C loops for the format searches that torch runs as hundreds of small ops (build.py: compiled
once per machine with the system C compiler, loaded with ctypes, checked against the torch path
before use; without a compiler the torch path runs, with the same bytes)."""
