"""Datasets and the shared observation/action schema.

`data` imports nothing else from this project, so every other package (sim, real,
policy, tools) can depend on it; the schema lives here for that reason.
"""
