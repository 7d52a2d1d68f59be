"""Connect to MongoDB: an external server from ``MONGODB_URI`` or the embedded SecantusDB.

The embedded server's WiredTiger storage can be open in one process at a time. The process
that starts it publishes ``{"uri", "pid"}`` in ``DATA_DIR/db-server.json``; other processes
(a CLI while the app runs) connect to that URI instead of opening the storage themselves.
Starting is serialised by an ``fcntl`` lock on ``DATA_DIR/db-server.lock``.
"""
from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import unquote_plus

from pymongo import MongoClient
from pymongo.errors import ConfigurationError, PyMongoError

from settings import PlatformError, Settings

logger = logging.getLogger(__name__)

SERVER_SELECTION_TIMEOUT_MS = 3000
"""How long a connection attempt waits for a usable server, in milliseconds."""
PUBLISHED_PING_TIMEOUT_MS = 2000
"""How long a published embedded server may take to answer ``ping``, in milliseconds."""
START_LOCK_TIMEOUT_S = 30.0
"""How long to wait for another process that is starting the embedded server, in seconds."""
PUBLISHED_FILE = "db-server.json"
LOCK_FILE = "db-server.lock"


@dataclass
class Connection:
    """An open client, plus the embedded server when this process started it."""

    client: MongoClient
    hosts: str
    """``host:port`` list of the URI, safe to show (no credentials)."""
    server: Any = None
    published_file: Path | None = None
    borrowed: bool = False
    """True when connected to the embedded server another process (or store) started and published."""

    def close(self) -> None:
        """Close the client; stop the embedded server and unpublish it if this process owns it."""
        self.client.close()
        if self.server is None:
            return
        atexit.unregister(self.close)
        if self.published_file is not None:
            _unpublish(self.published_file, self.server.uri)
        _stop_server(self.server)
        self.server = None


def uri_hosts(uri: str) -> str:
    """The ``host:port`` part of a MongoDB URI with any ``user:password@`` removed."""
    rest = uri.split("://", 1)[-1]
    netloc = re.split(r"[/?]", rest, maxsplit=1)[0]
    return netloc.rsplit("@", 1)[-1] or "localhost"


def scrub(text: str, uri: str) -> str:
    """Replace the credentials of ``uri`` (raw and percent-decoded) in a message with ``***``.

    The password is replaced wherever it occurs; the user name only as a whole word, so a
    short name does not mangle the rest of the message.
    """
    rest = uri.split("://", 1)[-1]
    netloc = re.split(r"[/?]", rest, maxsplit=1)[0]
    if "@" not in netloc:
        return text
    userinfo = netloc.rsplit("@", 1)[0]
    user, _, password = userinfo.partition(":")
    text = text.replace(uri, uri_hosts(uri))
    for secret in {userinfo, password, unquote_plus(userinfo), unquote_plus(password)} - {""}:
        text = text.replace(secret, "***")
    for name in {user, unquote_plus(user)} - {""}:
        text = re.sub(rf"(?<!\w){re.escape(name)}(?!\w)", "***", text)
    return text


def connection_error(exc: BaseException, hosts: str, uri: str = "") -> PlatformError:
    """A PlatformError for a failed database operation, naming the host but no secret."""
    reason = re.split(r", Timeout:| \(configured timeouts", str(exc))[0].split("\n")[0][:200]
    reason = scrub(reason, uri) if uri else reason
    return PlatformError(f"MongoDB at {hosts} is unreachable or refused the operation: {reason}")


def connect(settings: Settings) -> Connection:
    """Open the database named by ``settings``: external URI, published embedded server, or a new one."""
    if settings.mongodb_uri:
        return _connect_external(settings.mongodb_uri)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    published = settings.data_dir / PUBLISHED_FILE
    with _start_lock(settings.data_dir / LOCK_FILE):
        found = _published_uri(published)
        if found:
            logger.info("using the embedded database published by pid %s at %s", found[1], found[0])
            return Connection(client=_client(found[0]), hosts=uri_hosts(found[0]), borrowed=True)
        return _start_embedded(settings.db_dir, published)


def _client(uri: str, timeout_ms: int = SERVER_SELECTION_TIMEOUT_MS) -> MongoClient:
    # tz_aware: times come back as UTC-aware datetimes, never naive local-looking ones.
    return MongoClient(
        uri,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        tz_aware=True,
        appname="image-platform-labeling",
    )


def _connect_external(uri: str) -> Connection:
    hosts = uri_hosts(uri)
    try:
        client = _client(uri)
    except (ConfigurationError, ValueError, TypeError) as exc:
        raise PlatformError(f"MONGODB_URI for {hosts} is not a valid MongoDB URI: {scrub(str(exc), uri)[:200]}") from None
    try:
        client.admin.command("ping")
    except PyMongoError as exc:
        client.close()
        raise connection_error(exc, hosts, uri) from None
    logger.info("connected to MongoDB at %s", hosts)
    return Connection(client=client, hosts=hosts)


def _start_embedded(db_dir: Path, published: Path) -> Connection:
    from secantus import SecantusDBServer  # heavy import, only where the embedded server is used

    db_dir.mkdir(parents=True, exist_ok=True)
    try:
        server = SecantusDBServer(host="127.0.0.1", port=0, storage_path=str(db_dir))
    except Exception as exc:  # WiredTiger raises its own error type when the storage is locked
        owner = _read_published(published).get("pid", "unknown")
        raise PlatformError(
            f"Cannot open the embedded database in {db_dir}: {exc}. Another process "
            f"(pid {owner}) may hold it without answering; stop it or set MONGODB_URI."
        ) from None
    server.start()
    client = _client(server.uri)
    try:
        client.admin.command("ping")
    except PyMongoError as exc:
        client.close()
        _stop_server(server)
        raise connection_error(exc, uri_hosts(server.uri)) from None
    _publish(published, {"uri": server.uri, "pid": os.getpid(), "started": time.time()})
    logger.info("started the embedded database in %s at %s", db_dir, server.uri)
    connection = Connection(client=client, hosts=uri_hosts(server.uri), server=server, published_file=published)
    # A clean stop checkpoints the storage and unpublishes the URI even if the caller forgets close().
    atexit.register(connection.close)
    return connection


def _stop_server(server: Any) -> None:
    # SecantusDBServer.stop() closes its listening socket, but on Linux a close() does not
    # wake the accept() blocked in its thread, so stop() waits 2 s on the join. Shutting the
    # socket down first wakes accept() at once.
    listener = getattr(server, "_socket", None)
    if listener is not None:
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
    server.stop()


@contextlib.contextmanager
def _start_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``fcntl`` lock on ``path`` while the embedded server is found or started."""
    deadline = time.monotonic() + START_LOCK_TIMEOUT_S
    with open(path, "a+b") as handle:
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                    raise PlatformError(f"Timed out waiting for another process to start the database ({path})") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _read_published(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _published_uri(path: Path) -> tuple[str, int] | None:
    """The published ``(uri, pid)`` if that process is alive and its server answers ``ping``."""
    data = _read_published(path)
    uri, pid = data.get("uri"), data.get("pid")
    if not isinstance(uri, str) or not isinstance(pid, int) or not _pid_alive(pid):
        return None
    client = _client(uri, timeout_ms=PUBLISHED_PING_TIMEOUT_MS)
    try:
        client.admin.command("ping")
    except PyMongoError:
        logger.warning("the embedded database published by pid %s at %s does not answer", pid, uri)
        return None
    finally:
        client.close()
    return uri, pid


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _publish(path: Path, data: dict) -> None:
    """Write ``data`` as JSON atomically (temporary file + ``os.replace``)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)


def _unpublish(path: Path, uri: str) -> None:
    """Remove the published file if it still names this server."""
    with _start_lock(path.with_name(LOCK_FILE)):
        if _read_published(path).get("uri") == uri:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
