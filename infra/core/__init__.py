"""The core: errors and reason codes, the typed settings, declarative-file reading.

Rule: imports nothing of Renkei (only the standard library and third-party packages). Every other layer
may import it. Layers and their allowed directions: docs/architecture.md.
"""
