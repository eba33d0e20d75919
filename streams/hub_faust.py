"""The hub as a faust-streaming app (``python -m streams.hub_faust``): the same ``HubService`` as
``python -m streams.hub_loop``, driven by a faust agent instead of a plain aiokafka loop.

Kept so ``renkei bench`` measures what faust costs the hub in the same run (``hub_faust_ratio``
beside ``hub_ratio``); the platform runs ``streams.hub_loop``.
"""

from __future__ import annotations

from streams.hub import build_app


def main(argv: list[str] | None = None) -> None:
    from infra.core.arguments import worker_settings
    from streams.app import run_worker

    settings = worker_settings(argv, participant_id="hub")
    run_worker(build_app(settings), log_level=settings.log_level, log_format=settings.log_format, component="hub")


if __name__ == "__main__":
    main()
