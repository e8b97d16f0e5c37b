"""Pipeline stages: pure classes over typed payloads, runnable in one process or behind Ray Serve."""
