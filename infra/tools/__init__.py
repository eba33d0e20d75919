"""The tools: ``renkei demo``, ``bench``, ``chaos`` and the leak scan, which drive a running platform.

Rule: may import everything below the CLI (connectors, streams, ops, infra's lower layers); only the
CLI (``infra.cli``) imports the tools. Layers and their allowed directions: docs/architecture.md.
"""
