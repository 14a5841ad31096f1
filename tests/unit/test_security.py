"""Kafka security settings reach every client as configured, and secrets stay secret."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from billing.plan import load_plan
from runtime.settings import SettingsError, load_settings
from streams.kafka import new_producer
from streams.worker import Worker

PASSWORD = "s3cr3t-sasl-password"  # noqa: S105 - a test value that must never be printed
KEY_PASSWORD = "s3cr3t-key-password"  # noqa: S105 - likewise


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A self-signed CA and a client certificate with an encrypted key, made by openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is needed to make test certificates")
    where = tmp_path_factory.mktemp("tls")
    files = {"ca": where / "ca.pem", "cert": where / "client.pem", "key": where / "client.key"}
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-days", "2", "-subj", "/CN=test",
         "-keyout", str(files["key"]), "-out", str(files["cert"]),
         "-passout", f"pass:{KEY_PASSWORD}"],
        check=True, capture_output=True,
    )  # fmt: skip
    shutil.copy(files["cert"], files["ca"])
    return files


def secure(tls_files: dict[str, Path], **extra: str) -> dict[str, str]:
    return {
        "kafka_bootstrap": "kafka.example:9093",
        "kafka_security_protocol": "SASL_SSL",
        "kafka_sasl_mechanism": "SCRAM-SHA-512",
        "kafka_sasl_username": "metering",
        "kafka_sasl_password": PASSWORD,
        "kafka_ssl_cafile": str(tls_files["ca"]),
        "kafka_ssl_certfile": str(tls_files["cert"]),
        "kafka_ssl_keyfile": str(tls_files["key"]),
        "kafka_ssl_key_password": KEY_PASSWORD,
        **extra,
    }


async def test_sasl_and_tls_reach_the_aiokafka_clients(tls_files: dict[str, Path]) -> None:
    settings = load_settings(**secure(tls_files))
    options = settings.kafka_options()
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == (
        "metering",
        PASSWORD,
    )
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.cert_store_stats()["x509_ca"] == 1  # our CA, and only it
    producer = new_producer(settings)
    try:
        client = producer.client
        assert client._security_protocol == "SASL_SSL"
        assert client._sasl_mechanism == "SCRAM-SHA-512"
        assert client._sasl_plain_password == PASSWORD
        assert client._ssl_context.cert_store_stats()["x509_ca"] == 1
    finally:
        await producer.stop()  # never started: only marks it closed


def test_sasl_and_tls_reach_the_worker_consumer(tls_files: dict[str, Path]) -> None:
    settings = load_settings(**secure(tls_files, kafka_sasl_mechanism="PLAIN"))
    config = Worker(settings, load_plan()).consumer_config()
    assert config["security_protocol"] == "SASL_SSL"
    assert config["sasl_mechanism"] == "PLAIN"
    assert (config["sasl_plain_username"], config["sasl_plain_password"]) == ("metering", PASSWORD)
    assert isinstance(config["ssl_context"], ssl.SSLContext)
    assert config["ssl_context"].cert_store_stats()["x509_ca"] == 1
    assert config["group_id"] == settings.app_id and config["enable_auto_commit"] is False


def test_secrets_never_appear_in_repr_dumps_or_errors(tls_files: dict[str, Path]) -> None:
    settings = load_settings(**secure(tls_files), api_key="api-key-value")
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert PASSWORD not in text and KEY_PASSWORD not in text and "api-key-value" not in text
    with pytest.raises(SettingsError) as raised:
        load_settings(**secure(tls_files), partitions="many", api_key="api-key-value")
    assert "METERING_PARTITIONS" in str(raised.value)
    assert PASSWORD not in str(raised.value) and "api-key-value" not in str(raised.value)


ANY_HOST = "0.0.0.0"  # noqa: S104  # nosec B104 - what the settings must refuse without keys


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"kafka_security_protocol": "PLAINTEXT"}, "a SASL mechanism needs SASL_PLAINTEXT"),
        ({"kafka_sasl_mechanism": ""}, "SASL_SSL needs a mechanism, a username and a password"),
        ({"kafka_ssl_cafile": "/nonexistent/ca.pem"}, "/nonexistent/ca.pem is not a file"),
        ({"kafka_ssl_keyfile": ""}, "a client certificate needs its key"),
        ({"session_secret": "x" * 31}, "METERING_SESSION_SECRET: must have at least 32"),
        ({"metrics_host": ANY_HOST}, "/metrics served beyond loopback needs keys"),
        ({"api_host": ANY_HOST}, "an API listening beyond loopback needs keys"),
    ],
)
def test_inconsistent_security_settings_are_refused(
    tls_files: dict[str, Path], changes: dict[str, str], message: str
) -> None:
    overrides: dict[str, str | None] = {**secure(tls_files), **changes}
    cleaned = {k: (v or None) for k, v in overrides.items()}
    with pytest.raises(SettingsError, match=message):
        load_settings(**cleaned)
