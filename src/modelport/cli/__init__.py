"""The command line: one module per command, a thin shell over the Python API."""
