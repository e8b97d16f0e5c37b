"""Sonic Serve command-line entry points."""
