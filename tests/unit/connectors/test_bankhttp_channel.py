"""The bank HTTP channel's authentication, keys, TLS and published API (no broker, no database)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from connectors import channel_keys
from connectors.bankhttp import BankHttp, require_https
from connectors.bankhttp_openapi import OPENAPI, document
from connectors.channel_tls import certificate_hosts, channel_ca, client_context, server_certificate
from connectors.httpsig import (
    TO_BANK,
    TO_RENKEI,
    AuthFailed,
    ChannelKey,
    ChannelKeys,
    NonceCache,
    keys_from,
    sign,
    verify,
)
from connectors.runtime import start_site
from infra.core.errors import ConfigError
from infra.core.settings import Settings
from infra.domain.participants import load_participants
from infra.platform.keystore import KeyStore

DOCS_COPY = Path(__file__).resolve().parents[3] / "docs" / "openapi" / "bank-http.json"
KEYS = keys_from("bank-9002", [("bank-9002.1", b"k" * 32), ("bank-9002.2", b"j" * 32)])
NOW = 1_750_000_000.0
BODY = b'{"operation": "REGISTER"}'


def reason(fn, *args, **kw) -> str:
    with pytest.raises(AuthFailed) as failed:
        fn(*args, **kw)
    return failed.value.reason


# --- request signatures ------------------------------------------------------------------------------


def test_a_signed_request_verifies_with_any_listed_key_and_the_newest_signs():
    assert KEYS.current.key_id == "bank-9002.2"
    for key in KEYS.keys:
        header = sign(key, TO_RENKEI, "POST", "/v1/registrations", BODY, now=NOW)
        assert verify(KEYS, header, TO_RENKEI, "POST", "/v1/registrations", BODY, now=NOW).key_id == key.key_id


def test_every_signed_part_is_bound():
    header = sign(KEYS.current, TO_RENKEI, "POST", "/v1/registrations", BODY, now=NOW)
    good = dict(direction=TO_RENKEI, method="POST", path="/v1/registrations", body=BODY)
    changes = {"direction": TO_BANK, "method": "PUT", "path": "/v1/customers", "body": BODY + b" "}
    for part, value in changes.items():
        args = {**good, part: value}
        assert reason(verify, KEYS, header, args["direction"], args["method"], args["path"], args["body"],
                      now=NOW) == "BAD_SIGNATURE", part
    for field, swapped in (("Timestamp=", f"Timestamp={int(NOW) - 1}"), ("Nonce=", "Nonce=" + "0" * 32)):
        start = header.index(field)
        end = header.index(",", start)
        forged = header[:start] + swapped + header[end:]
        assert reason(verify, KEYS, forged, TO_RENKEI, "POST", "/v1/registrations", BODY, now=NOW) == "BAD_SIGNATURE"


def test_missing_unknown_stale_and_foreign_signatures_are_refused_with_their_reason():
    path = "/v1/registrations"
    assert reason(verify, KEYS, None, TO_RENKEI, "POST", path, BODY, now=NOW) == "AUTH_REQUIRED"
    assert reason(verify, KEYS, "Bearer abc", TO_RENKEI, "POST", path, BODY, now=NOW) == "AUTH_REQUIRED"
    other_bank = ChannelKey("bank-9003.1", b"k" * 32)  # the same secret under another bank's id
    assert reason(verify, KEYS, sign(other_bank, TO_RENKEI, "POST", path, BODY, now=NOW), TO_RENKEI, "POST", path,
                  BODY, now=NOW) == "UNKNOWN_KEY"
    wrong_secret = ChannelKey("bank-9002.1", b"x" * 32)
    assert reason(verify, KEYS, sign(wrong_secret, TO_RENKEI, "POST", path, BODY, now=NOW), TO_RENKEI, "POST", path,
                  BODY, now=NOW) == "BAD_SIGNATURE"
    old = sign(KEYS.current, TO_RENKEI, "POST", path, BODY, now=NOW - 301)
    assert reason(verify, KEYS, old, TO_RENKEI, "POST", path, BODY, now=NOW) == "EXPIRED"
    ahead = sign(KEYS.current, TO_RENKEI, "POST", path, BODY, now=NOW + 301)
    assert reason(verify, KEYS, ahead, TO_RENKEI, "POST", path, BODY, now=NOW) == "EXPIRED"
    assert verify(KEYS, sign(KEYS.current, TO_RENKEI, "POST", path, BODY, now=NOW - 299), TO_RENKEI, "POST", path,
                  BODY, now=NOW)


def test_a_nonce_is_accepted_once_within_the_window():
    clock = [NOW]
    cache = NonceCache(max_skew_s=300, clock=lambda: clock[0])
    verified = verify(KEYS, sign(KEYS.current, TO_BANK, "POST", "/v1/existence-checks", BODY, now=NOW), TO_BANK,
                      "POST", "/v1/existence-checks", BODY, now=NOW)
    cache.check_and_remember(verified)
    assert reason(cache.check_and_remember, verified) == "REPLAYED"
    clock[0] += 601  # outside the window the timestamp is refused anyway (EXPIRED)
    cache.check_and_remember(verified)


def test_secrets_never_show_in_reprs():
    assert "kkkk" not in repr(KEYS) and "b'k" not in repr(KEYS)


# --- keys in the key store --------------------------------------------------------------------------


@pytest.fixture
def store_settings(tmp_path: Path) -> Settings:
    settings = Settings(state_dir=tmp_path)
    KeyStore.for_settings(settings).bootstrap(load_participants(None, banks=3))
    return settings


def test_keys_are_issued_rotated_retired_and_exported(store_settings, tmp_path):
    with pytest.raises(ConfigError):
        channel_keys.load(store_settings, "bank-9002")
    first = channel_keys.load(store_settings, "bank-9002", create=True)
    assert [k.key_id for k in first.keys] == ["bank-9002.1"]
    assert channel_keys.load(store_settings, "bank-9002") == first  # the same secret when read again
    rotated = channel_keys.rotate(store_settings, "bank-9002")
    assert [k.key_id for k in rotated.keys] == ["bank-9002.1", "bank-9002.2"] and rotated.current.key_id.endswith(".2")
    assert rotated.keys[0].secret != rotated.keys[1].secret
    assert channel_keys.load(store_settings, "bank-9001", create=True).current.secret != rotated.current.secret
    out = tmp_path / "bank-9002.keys.json"
    channel_keys.export(rotated, out)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    assert channel_keys.load_exported(out) == rotated
    retired = channel_keys.retire(store_settings, "bank-9002", "bank-9002.1")
    assert [k.key_id for k in retired.keys] == ["bank-9002.2"]
    with pytest.raises(ConfigError):
        channel_keys.retire(store_settings, "bank-9002", "bank-9002.2")  # the last one
    with pytest.raises(ConfigError):
        channel_keys.retire(store_settings, "bank-9002", "bank-9001.1")  # not this bank's
    secret_files = list(KeyStore.for_settings(store_settings).dir.glob("bank-http.bank-9002.*.secret"))
    assert len(secret_files) == 1 and retired.current.secret not in secret_files[0].read_bytes()  # encrypted


# --- TLS ----------------------------------------------------------------------------------------------


async def test_the_server_certificate_is_issued_from_the_channel_ca_and_verified_by_clients(store_settings):
    tls = server_certificate(store_settings, "bank-9002", certificate_hosts("127.0.0.1"))
    assert server_certificate(store_settings, "bank-9002", ["127.0.0.1"]) == tls  # reused while it covers the host
    again = server_certificate(store_settings, "bank-9002", ["127.0.0.1", "bank.example"])
    assert again.cert_file == tls.cert_file  # re-issued in place to cover the new name
    _, _, ca_file = channel_ca(store_settings)

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.add_routes([web.get("/", hello)])
    runner, url = await start_site(app, "127.0.0.1", 0, ssl_context=again.server_context())
    try:
        assert url.startswith("https://")
        trusted = aiohttp.TCPConnector(ssl=client_context(ca_file))
        async with aiohttp.ClientSession(connector=trusted) as http, http.get(url) as resp:
            assert resp.status == 200
        untrusted = aiohttp.TCPConnector(ssl=client_context(None))  # the system store does not know our CA
        async with aiohttp.ClientSession(connector=untrusted) as http:
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await http.get(url)
    finally:
        await runner.cleanup()


def test_the_bank_endpoint_must_be_https():
    assert require_https("https://bank.example/api/") == "https://bank.example/api"
    for url in ("http://bank.example", "bank.example", "ftp://bank.example"):
        with pytest.raises(ConfigError):
            require_https(url)


# --- the published API ---------------------------------------------------------------------------------


def adapter() -> BankHttp:
    return BankHttp("bank-9002", "9002", "https://bank.example", keys=KEYS)


def test_the_docs_copy_is_the_document_and_a_valid_openapi_3():
    from openapi_spec_validator import validate

    validate(OPENAPI)
    assert DOCS_COPY.read_text(encoding="utf-8") == document(), \
        "regenerate: python -m connectors.bankhttp_openapi > docs/openapi/bank-http.json"


def test_every_documented_path_is_a_route_and_every_route_is_documented():
    routes = {(r.method.lower(), r.resource.canonical) for r in adapter().app().router.routes()
              if r.method != "HEAD"}
    documented = {(method, path) for path, ops in OPENAPI["paths"].items() for method in ops}
    assert documented == routes


async def test_the_document_is_served_and_unsigned_calls_are_refused_before_they_are_read():
    """No runtime behind this adapter: a call that reached a handler would fail with 500, not 401."""
    async with TestClient(TestServer(adapter().app())) as client:
        resp = await client.get("/openapi.json")
        assert resp.status == 200 and await resp.text() == DOCS_COPY.read_text(encoding="utf-8")
        assert json.loads(await resp.text())["openapi"].startswith("3.")
        every = [(method.upper(), path.replace("{key}", "k-1")) for path, ops in OPENAPI["paths"].items()
                 for method in ops if path.startswith("/v1/")]
        assert ("POST", "/v1/lookup-answers") in every and ("POST", "/v1/numbering-requests") in every
        for method, path in every:
            resp = await client.request(method, path, data=BODY, headers={"Idempotency-Key": "k-1"})
            assert resp.status == 401 and (await resp.json())["reason"] == "AUTH_REQUIRED"
            assert resp.headers["WWW-Authenticate"] == "RENKEI-HMAC-SHA256"
        forged = sign(ChannelKey("bank-9002.1", b"x" * 32), TO_RENKEI, "POST", "/v1/registrations", BODY)
        resp = await client.post("/v1/registrations", data=BODY, headers={"Authorization": forged})
        assert resp.status == 401 and (await resp.json())["reason"] == "BAD_SIGNATURE"
        # a request the bank signed for its own endpoint is no good here (direction)
        reflected = sign(KEYS.current, TO_BANK, "POST", "/v1/registrations", BODY)
        resp = await client.post("/v1/registrations", data=BODY, headers={"Authorization": reflected})
        assert resp.status == 401 and (await resp.json())["reason"] == "BAD_SIGNATURE"


def test_an_adapter_takes_only_its_own_banks_keys():
    with pytest.raises(ConfigError):
        BankHttp("bank-9003", "9003", "https://bank.example", keys=KEYS)
    with pytest.raises(ValueError):
        ChannelKeys("bank-9002", ())


def test_the_channel_key_command_issues_rotates_exports_and_never_prints_a_secret(store_settings, tmp_path, capsys):
    import base64

    from infra.cli import main

    flags = ["--state-dir", str(store_settings.state_dir), "--json"]
    assert main(["bank", "channel-key", "--bank", "9002", *flags]) == 0
    first = json.loads(capsys.readouterr().out)
    assert (first["status"], first["bank"], first["keys"], first["current"]) == (
        "DONE", "bank-9002", ["bank-9002.1"], "bank-9002.1")
    out = tmp_path / "bank.keys"
    assert main(["bank", "channel-key", "--bank", "bank-9002", "--rotate", "--export", str(out), *flags]) == 0
    printed = capsys.readouterr().out
    second = json.loads(printed)
    assert second["keys"] == ["bank-9002.1", "bank-9002.2"] and second["exported_to"] == str(out)
    exported = channel_keys.load_exported(out)
    assert exported == channel_keys.load(store_settings, "bank-9002")
    for key in exported.keys:
        assert base64.b64encode(key.secret).decode() not in printed and key.secret.hex() not in printed
    assert main(["bank", "channel-key", "--bank", "9002", "--retire", "bank-9002.2", *flags]) == 0
    assert json.loads(capsys.readouterr().out)["keys"] == ["bank-9002.1"]
    assert main(["bank", "channel-key", "--bank", "9002", "--retire", "bank-9002.1", *flags]) == 2  # the last one
    assert main(["bank", "channel-key", "--bank", "agency-nta", *flags]) == 2
