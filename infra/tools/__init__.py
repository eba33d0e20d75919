"""The tools: ``renkei demo``, ``bench``, ``chaos`` and the leak scan, which drive a running platform.

Rule: may import everything below the CLI (connectors, streams, ops, infra's lower layers); only the
CLI (``infra.cli``) imports the tools. Layers and their allowed directions: docs/architecture.md.

Its public names are its modules (``__all__``): import from them, e.g. ``from infra.tools.demo import …``. The package
re-exports nothing, so importing one module never loads the whole layer.
"""

__all__ = [
    "bench",
    "bench_figures",
    "bench_workers",
    "chaos",
    "chaos_broker",
    "chaos_insider",
    "chaos_invariants",
    "demo",
    "demo_accounts",
    "demo_lookups",
    "demo_portal",
    "harness",
    "leakscan",
]
