"""JSON log lines (infra.core.logs): their fields, and the leak scan reading them as it reads text logs."""

from __future__ import annotations

import io
import json
import logging
import random

import pytest

from infra.core.errors import ConfigError
from infra.core.logs import JsonFormatter, configure_logging, log_context
from infra.core.settings import load_settings
from infra.domain.validation import generate_my_number
from infra.tools.leakscan import Scanner

FIELDS = {"time", "level", "component", "participant", "logger", "message", "message_id", "correlation_id",
          "reason", "trace_id"}


def _lines(component: str = "hub", participant: str = "") -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(component, participant))
    logger = logging.getLogger(f"renkei.test.{component}.{random.random()}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


def _parsed(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_line_carries_the_messages_ids_reason_and_trace():
    logger, stream = _lines("registry", "registry")
    with log_context(message_id="7f0c…m", correlation_id="7f0c…c", trace_id="4bf92f3577b34da6a3ce929d0e0e4736"):
        logger.info("answered %s", "provision.inquiry")
        logger.warning("refused", extra={"reason": "UNAUTHORISED", "participant": "bank-9001"})
    logger.info("outside any message")
    first, second, third = _parsed(stream)
    assert set(first) == FIELDS
    assert (first["level"], first["component"], first["participant"], first["message"]) == \
        ("INFO", "registry", "registry", "answered provision.inquiry")
    assert (first["message_id"], first["correlation_id"], first["trace_id"]) == \
        ("7f0c…m", "7f0c…c", "4bf92f3577b34da6a3ce929d0e0e4736")
    assert first["time"].endswith("+00:00") and first["reason"] == ""
    assert (second["reason"], second["participant"], second["level"]) == ("UNAUTHORISED", "bank-9001", "WARNING")
    assert (third["message_id"], third["trace_id"], third["participant"]) == ("", "", "registry")  # context reset


def test_an_error_keeps_its_traceback_in_one_line():
    logger, stream = _lines()
    try:
        raise RuntimeError("the handler failed")
    except RuntimeError:
        logger.exception("handler for %s failed", "registration.request")
    (line,) = _parsed(stream)
    assert line["level"] == "ERROR" and "RuntimeError: the handler failed" in line["exception"]
    assert len(stream.getvalue().splitlines()) == 1


def test_the_leak_scan_finds_a_my_number_in_every_json_field():
    """A bug that logs a My Number must be caught in JSON logs as in text ones: in the message, an extra field,
    an exception, next to Japanese text (not escaped: ensure_ascii=False)."""
    rng = random.Random(19)
    numbers = [generate_my_number(rng) for _ in range(4)]
    logger, stream = _lines("portal")
    logger.info("登録 %s", numbers[0])
    logger.info("refused", extra={"reason": numbers[1]})
    try:
        raise ValueError(f"bad input {numbers[2]}")
    except ValueError:
        logger.exception("failed")
    with log_context(correlation_id=numbers[3]):
        logger.info("ok")
    assert "\\u" not in stream.getvalue()
    hits = Scanner(numbers).search(stream.getvalue().encode())
    assert {person for person, _ in hits} == {0, 1, 2, 3}


def test_a_normal_line_holds_no_my_number():
    rng = random.Random(23)
    numbers = [generate_my_number(rng) for _ in range(50)]
    logger, stream = _lines("hub")
    for _ in range(200):
        with log_context(message_id=str(rng.getrandbits(128)), trace_id=f"{rng.getrandbits(128):032x}"):
            logger.info("refused %s from %s: %s", "provision.inquiry", "agency-nta", "UNAUTHORISED")
    assert Scanner(numbers).search(stream.getvalue().encode()) == []


def test_configure_logging_installs_one_handler_of_the_chosen_format():
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        handler = configure_logging("WARNING", "json", "dicj")
        assert root.handlers == [handler] and isinstance(handler.formatter, JsonFormatter)
        assert root.level == logging.WARNING
        handler = configure_logging("INFO", "text", "dicj")
        assert not isinstance(handler.formatter, JsonFormatter)
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


def test_log_format_is_a_setting_with_its_environment_variable():
    assert load_settings(environ={}).log_format == "text"
    assert load_settings(environ={"RENKEI_LOG_FORMAT": "json"}).log_format == "json"
    with pytest.raises(ConfigError, match="log_format"):
        load_settings(environ={"RENKEI_LOG_FORMAT": "xml"})
