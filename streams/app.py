"""One way to build a faust-streaming app for Renkei's stream processors.

Settings tuned for Apache Kafka and the Tansu fallback (which holds
JoinGroup for about session_timeout/2): 10 s session and rebalance timeouts,
1 s heartbeats, at-least-once processing (faust's exactly_once is unreliable
on rebalance and needs transactions, which Tansu lacks — effects are
idempotent in PostgreSQL instead), the fetch wait of ``infra.platform.kafka``
instead of faust's fixed 1500 ms, no topic declaration (``renkei topics
apply`` owns the layout) and no durable faust tables (state lives in
PostgreSQL).
"""

from __future__ import annotations

import ssl
from typing import Any

import faust

from infra.core.logs import configure_logging
from infra.core.settings import Settings
from infra.platform.kafka import fetch_wait_ms

BATCH_MAX = 500
BATCH_WITHIN_S = 0.02


def _credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    k = settings.kafka
    context: ssl.SSLContext | None = k.client_options().get("ssl_context")
    if k.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(username=k.sasl_username, password=k.sasl_password,
                                     mechanism=k.sasl_mechanism or "PLAIN", ssl_context=context)
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def make_app(settings: Settings, app_id: str) -> faust.App:
    datadir = settings.state_dir / "faust" / app_id
    datadir.parent.mkdir(parents=True, exist_ok=True)
    brokers = ";".join(f"kafka://{h.strip()}" for h in settings.kafka.bootstrap.split(","))
    app = faust.App(
        app_id,
        broker=brokers,
        broker_credentials=_credentials(settings),
        store="memory://",
        web_enabled=False,
        topic_allow_declare=False,
        topic_disable_leader=True,
        processing_guarantee="at_least_once",
        broker_session_timeout=10,
        broker_heartbeat_interval=1,
        broker_rebalance_timeout=10,
        broker_request_timeout=40,
        broker_commit_interval=0.2,
        consumer_auto_offset_reset="earliest",
        producer_linger=0.005,
        stream_buffer_maxsize=4 * BATCH_MAX,
        datadir=str(datadir),
        logging_config=None,
    )
    _fetch_wait(app, fetch_wait_ms(settings.kafka))
    return app


def _fetch_wait(app: faust.App, wait_ms: int) -> None:
    """Make the app's consumer hold empty fetches for ``wait_ms`` instead of faust's fixed 1500 ms
    (on Tansu every hop pays the whole wait)."""
    from faust.transport.drivers import aiokafka as driver

    class Thread(driver.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport: Any) -> Any:
            consumer = super()._create_worker_consumer(transport)
            consumer._fetch_max_wait_ms = wait_ms  # read when the consumer starts its fetcher
            return consumer

    class Consumer(driver.Consumer):
        def _new_consumer_thread(self) -> Thread:
            return Thread(self, loop=self.loop, beacon=self.beacon)

    app.transport.Consumer = Consumer


def run_worker(app: faust.App, *, log_level: str = "INFO", log_format: str = "text", component: str = "") -> None:
    """Run ``app`` until SIGTERM/SIGINT (faust's Worker handles both), logging as ``log_format`` says."""
    configure_logging(log_level, log_format, component or app.conf.id)
    # override_logging=False: faust would replace the handler with its own coloured console one.
    worker = faust.Worker(app, loglevel=log_level.lower() if log_level != "WARNING" else "warn", quiet=True,
                          override_logging=False)
    worker.spinner = None  # a service has no terminal: its spinner would write escape codes into the log
    worker.execute_from_commandline()


def serve_until_signal(coro: Any, log_level: str = "INFO", log_format: str = "text", component: str = "") -> None:
    """Run a plain asyncio service until SIGTERM/SIGINT, then cancel it cleanly."""
    import asyncio
    import signal

    configure_logging(log_level, log_format, component or "renkei")

    async def runner() -> None:
        task = asyncio.ensure_future(coro)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            pass

    asyncio.run(runner())
