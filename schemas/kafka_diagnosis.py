"""Why a Kafka connection failed, found by repeating it once, step by step, against one bootstrap server.

kafka-python retries a refused connection until its bootstrap deadline and then reports only ``Unable to
bootstrap``; the reason stays in its debug log. :func:`explain_connection_failure` takes the first bootstrap
server that accepts a TCP connection and goes through what a client does there (TLS handshake, SASL handshake,
SASL login) with plain sockets, naming the first step that fails and the settings it used. Where a step fails
because the listener speaks another protocol, it asks the listener what it does speak and says which
``security_protocol`` to set. No message names the password.

kafka-python is imported only while probing, so the settings and the error type work without it installed.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from typing import Any, TypeVar

from schemas.kafka_settings import KafkaSettings

DEFAULT_PORT = 9092
"""Kafka's port, which kafka-python assumes for a bootstrap server given without one."""
_ILLEGAL_SASL_STATE = 34
"""Kafka's answer to a SASL handshake on a listener without SASL."""
_UNSUPPORTED_SASL_MECHANISM = 33


Client = TypeVar("Client")


class KafkaUnreachableError(RuntimeError):
    """A Kafka client could not connect; the message names the cause a probe found and the settings involved."""


def connect(settings: KafkaSettings, make_client: Callable[[], Client]) -> Client:
    """``make_client()``: a kafka-python client built from ``settings``, or why it could not bootstrap.

    Raises :class:`KafkaUnreachableError` (:func:`unreachable_error`) from kafka-python's timeout.
    """
    from kafka.errors import KafkaTimeoutError

    try:
        return make_client()
    except KafkaTimeoutError as error:  # kafka-python says only "Unable to bootstrap"
        raise unreachable_error(settings, error) from error


def unreachable_error(
    settings: KafkaSettings, error: BaseException, timeout_seconds: float = 5.0
) -> KafkaUnreachableError:
    """The error to raise ``from error`` when a kafka-python client could not bootstrap with ``settings``."""
    cause = _probe(settings, timeout_seconds)
    if cause is None:
        cause = f"a probe found no fault in these settings; kafka-python said {type(error).__name__}: {error}"
    return KafkaUnreachableError(_without_password(f"{_described(settings)}: {cause}", settings))


def explain_connection_failure(settings: KafkaSettings, timeout_seconds: float = 5.0) -> str:
    """Why a client with ``settings`` cannot connect, probing the first reachable bootstrap server.

    ``timeout_seconds`` bounds each step (connect, handshake, one request). When every step succeeds, the
    answer says so: the cause is then not in the connection settings.
    """
    cause = _probe(settings, timeout_seconds)
    if cause is None:
        cause = "no cause found: a probe connected" + (
            f" and logged in as {settings.sasl_username!r}" if settings.sasl_username else ""
        )
    return _without_password(cause, settings)


def bootstrap_addresses(bootstrap_servers: str) -> list[tuple[str, int]]:
    """``host:port`` entries of a comma-separated list (``[v6 address]:port`` too; no port means 9092)."""
    addresses = []
    for entry in (part.strip() for part in bootstrap_servers.split(",")):
        if not entry:
            continue
        host, colon, port = entry.rpartition(":")
        if not colon or "]" in port:  # no port, or a bare bracketed IPv6 address
            host, port = entry, str(DEFAULT_PORT)
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bootstrap server {entry!r} has no valid port ({port!r})")
        addresses.append((host.removeprefix("[").removesuffix("]"), int(port)))
    if not addresses:
        raise ValueError(f"bootstrap_servers {bootstrap_servers!r} names no server")
    return addresses


def _described(settings: KafkaSettings) -> str:
    """The connection settings a cause refers to: never the password."""
    described = f"cannot connect to Kafka (bootstrap_servers {settings.bootstrap_servers}, "
    described += f"security_protocol {settings.security_protocol}"
    if settings.sasl_mechanism is not None:
        described += f", sasl_mechanism {settings.sasl_mechanism}, sasl_username {settings.sasl_username!r}"
    if settings.uses_tls:
        described += f", ssl_cafile {settings.ssl_cafile or 'unset: the system CAs'}"
    return described + ")"


def _without_password(message: str, settings: KafkaSettings) -> str:
    password = settings.sasl_password.get_secret_value() if settings.sasl_password else ""
    return message.replace(password, "********") if password else message


def _probe(settings: KafkaSettings, timeout_seconds: float) -> str | None:
    """The first failing step at the first reachable bootstrap server, or None when none fails."""
    try:
        addresses = bootstrap_addresses(settings.bootstrap_servers)
        context = _tls_context(settings.ssl_cafile) if settings.uses_tls else None
    except ValueError as error:
        return str(error)
    unreachable = []
    for host, port in addresses:
        try:
            raw = socket.create_connection((host, port), timeout=timeout_seconds)
        except OSError as error:
            unreachable.append(f"{host}:{port} ({_socket_failure(error, timeout_seconds)})")
            continue
        with raw:
            return _probe_server(settings, context, host, port, raw, timeout_seconds)
    return f"cannot reach {', '.join(unreachable)}"


def _tls_context(cafile: str | None) -> ssl.SSLContext:
    """What kafka-python checks by default: the certificate chain against ``cafile`` (or the system's), and the host."""
    try:
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as error:
        raise ValueError(f"cannot use ssl_cafile {cafile!r} as a CA file: {error}") from error


def _reason(error: BaseException) -> str:
    """An error's text, led by its type unless it already is (kafka-python's errors are)."""
    text = str(error)
    return text if text.startswith(type(error).__name__) else f"{type(error).__name__}: {text}"


def _socket_failure(error: OSError, timeout_seconds: float) -> str:
    if isinstance(error, socket.gaierror):
        return f"the host does not resolve: {error.strerror}"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, TimeoutError):
        return f"timed out after {timeout_seconds:g} s"
    return error.strerror or str(error)


def _probe_server(
    settings: KafkaSettings,
    context: ssl.SSLContext | None,
    host: str,
    port: int,
    raw: socket.socket,
    timeout_seconds: float,
) -> str | None:
    """TLS (when the settings use it), then the SASL steps, on the connection ``raw`` made to ``host:port``."""
    if context is None:
        return _probe_kafka(settings, host, port, raw, timeout_seconds)
    server = f"{host}:{port}"
    try:
        connection = context.wrap_socket(raw, server_hostname=host)
    except ssl.SSLCertVerificationError as error:
        trusted = f"ssl_cafile {settings.ssl_cafile}" if settings.ssl_cafile else "the system CAs (no ssl_cafile)"
        return f"the TLS certificate of {server} does not verify against {trusted}: {error.verify_message}"
    except OSError as error:  # ssl.SSLError included
        spoken = _spoken_protocol(host, port, timeout_seconds, tls=False)
        if spoken is not None:
            return f"{server} does not speak TLS: set security_protocol to {spoken}"
        return f"the TLS handshake with {server} failed: {error}"
    with connection:
        return _probe_kafka(settings, host, port, connection, timeout_seconds)


def _probe_kafka(
    settings: KafkaSettings, host: str, port: int, connection: socket.socket, timeout_seconds: float
) -> str | None:
    """The SASL handshake (which every listener answers), then the login when the settings name one."""
    from kafka.errors import KafkaError

    server = f"{host}:{port}"
    protocol = settings.security_protocol
    kafka = _KafkaConnection(connection)
    try:
        mechanisms = _sasl_mechanisms(kafka, settings.sasl_mechanism)
    except (OSError, KafkaError) as error:
        spoken = None if settings.uses_tls else _spoken_protocol(host, port, timeout_seconds, tls=True)
        if spoken is not None:
            return (
                f"{server} speaks TLS (a handshake without certificate checks succeeds): set security_protocol to "
                f"{spoken}, with ssl_cafile if a private CA signed the broker's certificate"
            )
        return f"{server} did not answer a SASL handshake as Kafka does: {_reason(error)}"
    if mechanisms is None:
        if settings.sasl_mechanism is None:
            return None
        return (
            f"{server} does not use SASL: set security_protocol to {protocol.removeprefix('SASL_')} "
            "and leave sasl_mechanism, sasl_username and sasl_password unset"
        )
    if settings.sasl_mechanism is None:
        return (
            f"{server} asks for SASL (mechanisms enabled there: {', '.join(mechanisms)}): set security_protocol "
            f"to SASL_{protocol}, with sasl_mechanism, sasl_username and sasl_password"
        )
    if settings.sasl_mechanism not in mechanisms:
        return (
            f"SASL mechanism {settings.sasl_mechanism} is not enabled on {server}; "
            f"it enables {', '.join(mechanisms) or 'none'}: set sasl_mechanism to one of them"
        )
    return _login_refusal(settings, kafka, host, port)


def _spoken_protocol(host: str, port: int, timeout_seconds: float, *, tls: bool) -> str | None:
    """The ``security_protocol`` a listener answers with ``tls`` on or off (certificates unchecked), or None."""
    unchecked = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    unchecked.check_hostname = False
    unchecked.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout_seconds) as raw:
            connection = unchecked.wrap_socket(raw, server_hostname=host) if tls else raw
            with connection:
                mechanisms = _sasl_mechanisms(_KafkaConnection(connection), None)
    except Exception:  # any failure means: not this protocol either
        return None
    transport = "SSL" if tls else "PLAINTEXT"
    if mechanisms is None:
        return transport
    return f"SASL_{transport} (SASL mechanisms enabled there: {', '.join(mechanisms)})"


def _sasl_mechanisms(connection: _KafkaConnection, mechanism: str | None) -> list[str] | None:
    """The SASL mechanisms the listener enables, or None when it does not use SASL (a SaslHandshake answers)."""
    from kafka.errors import for_code
    from kafka.protocol.sasl import SaslHandshakeRequest

    response = connection.ask(SaslHandshakeRequest(mechanism=mechanism or "PLAIN", version=1))
    code = int(response.error_code)
    if code == _ILLEGAL_SASL_STATE:
        return None
    if code not in (0, _UNSUPPORTED_SASL_MECHANISM):
        raise for_code(code)()
    return [str(name) for name in response.mechanisms]


def _login_refusal(settings: KafkaSettings, connection: _KafkaConnection, host: str, port: int) -> str | None:
    """Log in as kafka-python would after the handshake; why the broker refused, or None when it did not."""
    from kafka.errors import KafkaError
    from kafka.net.sasl import get_sasl_mechanism
    from kafka.protocol.sasl import SaslAuthenticateRequest

    server = f"{host}:{port}"
    login = f"the login of user {settings.sasl_username!r} with mechanism {settings.sasl_mechanism}"
    client = get_sasl_mechanism(settings.sasl_mechanism)(
        host=host,
        security_protocol=settings.security_protocol,
        sasl_mechanism=settings.sasl_mechanism,
        sasl_plain_username=settings.sasl_username,
        sasl_plain_password=settings.sasl_password.get_secret_value() if settings.sasl_password else "",
    )
    try:
        while not client.is_done():
            response = connection.ask(SaslAuthenticateRequest(auth_bytes=client.auth_bytes(), version=1))
            if response.error_code:
                return f"{server} refused {login}: {response.error_message}"
            client.receive(response.auth_bytes)
    except (OSError, KafkaError, ValueError) as error:
        return f"{login} on {server} broke off: {_reason(error)}"
    return None if client.is_authenticated() else f"{server} refused {login}"


class _KafkaConnection:
    """One blocking socket speaking Kafka's request/response framing (kafka-python's own codec)."""

    def __init__(self, connection: socket.socket) -> None:
        from kafka.protocol.parser import KafkaProtocol

        self._socket = connection
        self._protocol = KafkaProtocol(client_id="fedstream-connection-probe")

    def ask(self, request: Any) -> Any:
        """Send ``request`` and wait for its response (``OSError`` when the server closes the connection)."""
        self._protocol.send_request(request)
        self._socket.sendall(self._protocol.send_bytes())
        while True:
            received = self._socket.recv(65536)
            if not received:
                raise ConnectionAbortedError("the server closed the connection")
            responses = self._protocol.receive_bytes(received)
            if responses:
                return responses[0][1]


if __name__ == "__main__":  # python -m schemas.kafka_diagnosis: probe with the FEDSTREAM_KAFKA_* settings
    print(explain_connection_failure(KafkaSettings.from_env()))
