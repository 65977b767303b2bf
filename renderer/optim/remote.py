"""A running engine served over a socket, and the client a viewer attaches with (issue 16, item 4).

`EngineServer(engine, problem, address, token)` publishes the engine's snapshots and accepts the same
typed commands as the in-process engine; `RemoteEngine(address, token)` is the client: it has the
`snapshot()` / `send()` surface of `Engine`, so the viewer's `AppState` drives either one.

Transport: `multiprocessing.connection` (the standard library's framed, HMAC-authenticated socket
connections). The token is the connection's authkey: a client without it fails the challenge before any
message is read. Messages are never pickled: each is one JSON header plus raw array bytes
(`encode`/`decode`), received with a size limit, so a malformed or oversized message is refused (the
connection is dropped; the run goes on). The server binds 127.0.0.1 unless told otherwise.

Protocol (client -> server): `{"op": "hello"}` -> the problem's description (scene file, parameters,
initial values, targets, learning rates, loss weights, views, step budget, target thumbnails);
`{"op": "snapshot", "since": {history name: length known}}` -> the latest snapshot, histories only
past what the client has; `{"op": "command", "kind", "args"}` -> `{"ok": true}` or `{"ok": false,
"error"}` (validated by the same `commands.make` as in-process). Images travel as float16.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
from dataclasses import fields, replace
from multiprocessing.connection import Client, Connection, Listener

import numpy as np

from . import commands
from .engine import History, Snapshot

log = logging.getLogger("drstudio.remote")
MAX_MESSAGE = 64 * 2**20  # bytes: larger messages are refused
DEFAULT_PORT = 7391
_IMAGE_FIELDS = ("render", "target", "grad_image")
_ARRAY_DICTS = ("values", "errors", "texture_grads", "vertex_grads", "param_grads", "thumbnails")


def new_token() -> str:
    return secrets.token_urlsafe(18)


def parse_address(text: str | None, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """'HOST:PORT', ':PORT', 'PORT' or None -> (host, port); ValueError otherwise."""
    if not text:
        return default_host, DEFAULT_PORT
    host, _, port = text.rpartition(":") if ":" in text else ("", "", text)
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"address: expected HOST:PORT or PORT, got {text!r}") from None
    if not 0 <= number < 65536:
        raise ValueError(f"address: port {number} is not in [0, 65535]")
    return host or default_host, number


# -- messages: a JSON header and raw array bytes, never pickles --------------------------------------
def encode(obj) -> bytes:
    """One message: 8-byte header length, the JSON header, then the bytes of every array it names."""
    blobs: list[bytes] = []

    def walk(x):
        if isinstance(x, np.ndarray):
            a = np.ascontiguousarray(x)
            blobs.append(a.tobytes())
            return {"__array__": len(blobs) - 1, "dtype": a.dtype.str, "shape": list(a.shape)}
        if isinstance(x, dict):
            return {str(k): walk(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [walk(v) for v in x]
        if isinstance(x, (np.floating, float)):
            x = float(x)
            return x if np.isfinite(x) else {"__float__": repr(x)}
        if isinstance(x, (np.integer,)):
            return int(x)
        if isinstance(x, (np.bool_,)):
            return bool(x)
        return x

    body = walk(obj)  # fills `blobs`
    header = json.dumps({"body": body, "sizes": [len(b) for b in blobs]}).encode()
    return len(header).to_bytes(8, "little") + header + b"".join(blobs)


_DTYPES = {np.dtype(t).str for t in ("float16", "float32", "float64", "int32", "int64", "uint8", "bool")}


def decode(data: bytes):
    """Inverse of `encode`; ValueError for anything malformed (never executes or imports anything)."""
    if len(data) < 8:
        raise ValueError("message too short")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise ValueError("message header length past the end")
    try:
        header = json.loads(data[8:8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"message header is not JSON: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("sizes"), list):
        raise ValueError("message header: expected {'body', 'sizes'}")
    sizes = header["sizes"]
    if not all(isinstance(s, int) and s >= 0 for s in sizes) or 8 + n + sum(sizes) != len(data):
        raise ValueError("message array sizes do not add up to its length")
    offsets = np.cumsum([8 + n, *sizes]).tolist()

    def walk(x):
        if isinstance(x, dict):
            if "__array__" in x:
                i, dtype, shape = x["__array__"], x.get("dtype"), x.get("shape")
                if not (isinstance(i, int) and 0 <= i < len(sizes)) or dtype not in _DTYPES \
                        or not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
                    raise ValueError("message: malformed array reference")
                raw = data[offsets[i]:offsets[i + 1]]
                if int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize != len(raw):
                    raise ValueError("message: array size does not match its shape")
                return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
            if "__float__" in x:
                return float(x["__float__"])
            return {k: walk(v) for k, v in x.items()}
        if isinstance(x, list):
            return [walk(v) for v in x]
        return x

    return walk(header.get("body"))


def _image(a):
    return None if a is None else np.asarray(a, np.float16)


_UNCHANGED = "__unchanged__"


def snapshot_message(snap: Snapshot, since: dict, sent: dict | None = None) -> dict:
    """A snapshot as a message: images as float16, histories past `since` (name -> length the client
    has; a shorter series on the server, after a reset, is sent whole). `sent` (one dict per client,
    kept by the server) holds the image arrays and thumbnails last sent: the same objects again (the
    engine re-renders images at most ten times a second, thumbnails when targets change) go as the
    string `_UNCHANGED`, so a client polling twenty times a second does not receive (and the served
    process does not encode) what it already has."""
    out = {}
    for f in fields(Snapshot):
        v = getattr(snap, f.name)
        if f.name in _IMAGE_FIELDS:
            if sent is not None and v is not None and sent.get(f.name) is v:
                out[f.name] = _UNCHANGED
                continue
            if sent is not None:
                sent[f.name] = v  # held, so its id is not reused while compared
            v = _image(v)
        elif f.name == "thumbnails":  # a new dict every snapshot; new images only with new targets
            if sent is not None and sent.get("targets_version") == snap.targets_version:
                out[f.name] = _UNCHANGED
                continue
            if sent is not None:
                sent["targets_version"] = snap.targets_version
            v = {k: _image(t) for k, t in v.items()}
        elif f.name == "history":
            parts = {}
            for name, series in v.items():
                start = since.get(name, 0)
                start = start if start <= len(series) else 0  # the client is ahead: a reset, send it whole
                parts[name] = {"start": start, "data": np.asarray(series[start:])}
            v = parts
        elif f.name == "free":
            v = list(v)
        out[f.name] = v
    return out


# -- server -------------------------------------------------------------------------------------------
class EngineServer:
    """Serves `engine` (a running `Engine`) on `address` to clients holding `token`, one thread per
    client; `close()` stops it. A client that disconnects or misbehaves is dropped; the run goes on."""

    def __init__(self, engine, problem, address: tuple[str, int] = ("127.0.0.1", DEFAULT_PORT),
                 token: str | None = None):
        self.engine, self.problem = engine, problem
        self.token = token or new_token()
        self._listener = Listener(address, family="AF_INET", authkey=self.token.encode())
        self.address = self._listener.address
        self._hello = self._describe()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="drstudio-serve", daemon=True)
        self._thread.start()
        self.clients = 0
        self.refused = 0

    def _describe(self) -> dict:
        p = self.problem
        return {"scene": str(p.scene.path), "param_specs": list(p.param_specs),
                "values": {k: p.ds.get(k) for k in p.ds.params}, "truth": dict(p.truth),
                "initial": dict(p.initial), "lrs": dict(p.lrs), "weights": dict(p.weights),
                "views": list(p.views), "steps": int(p.steps),
                "thumbnails": {c: _image(p.target_numpy(c)) for c in p.views}}

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn = self._listener.accept()
            except Exception as exc:  # a wrong token (AuthenticationError), a port scan, or close()
                if self._stop.is_set():
                    return
                self.refused += 1
                log.warning("refused a connection: %s", exc)
                continue
            self.clients += 1
            threading.Thread(target=self._serve, args=(conn,), name="drstudio-serve-client", daemon=True).start()

    def _serve(self, conn: Connection) -> None:
        sent: dict = {}  # what this client already has (snapshot_message)
        try:
            while not self._stop.is_set():
                try:
                    msg = decode(conn.recv_bytes(MAX_MESSAGE))
                except (EOFError, OSError):
                    return  # gone, or a message over MAX_MESSAGE: drop the client
                except ValueError as exc:
                    log.warning("dropping a client that sent a malformed message: %s", exc)
                    return
                conn.send_bytes(encode(self._answer(msg, sent)))
        except (OSError, ValueError) as exc:
            log.warning("client connection ended: %s", exc)
        finally:
            conn.close()

    def _answer(self, msg, sent: dict | None = None) -> dict:
        if not isinstance(msg, dict):
            return {"ok": False, "error": "expected a message object"}
        op = msg.get("op")
        if op == "hello":
            return {"ok": True, **self._hello}
        if op == "snapshot":
            since = msg.get("since") if isinstance(msg.get("since"), dict) else {}
            since = {k: v for k, v in since.items() if isinstance(v, int) and v >= 0}
            return {"ok": True, "snapshot": snapshot_message(self.engine.snapshot(), since, sent)}
        if op == "command":
            try:
                args = msg.get("args", [])
                if not isinstance(args, list):
                    raise commands.CommandError("args: expected a list")
                self.engine.send(commands.make(str(msg.get("kind")), *args))
            except commands.CommandError as exc:
                return {"ok": False, "error": str(exc)}
            return {"ok": True}
        return {"ok": False, "error": f"unknown op {op!r}"}

    def close(self) -> None:
        self._stop.set()
        try:
            self._listener.close()
        except OSError:
            pass


# -- client -------------------------------------------------------------------------------------------
class RemoteEngine:
    """The client side: `snapshot()` and `send()` like `Engine`, over one authenticated connection.
    A background thread fetches snapshots every `poll` seconds; `snapshot()` returns the latest one
    without touching the network, so a UI calling it every frame never waits for the served process.
    `refresh()` fetches one now (tests, scripts). A lost connection shows as the snapshot's `error`."""

    def __init__(self, address: tuple[str, int], token: str, poll: float = 0.1, timeout: float = 60.0):
        self._conn = Client(address, family="AF_INET", authkey=token.encode())
        self._lock = threading.RLock()
        self.poll, self.timeout = poll, timeout
        self.description = self._call({"op": "hello"})
        self._history = History()  # appended as the server's series grow; views go into snapshots
        self._snap = Snapshot()
        self._closed = threading.Event()
        self.refresh()
        self._poller = threading.Thread(target=self._poll_loop, name="drstudio-attach", daemon=True)
        self._poller.start()

    def _call(self, msg: dict) -> dict:
        with self._lock:
            return self._call_locked(msg)

    def _call_locked(self, msg: dict) -> dict:
        self._conn.send_bytes(encode(msg))
        if not self._conn.poll(self.timeout):
            raise TimeoutError(f"the served engine did not answer in {self.timeout} s")
        answer = decode(self._conn.recv_bytes(MAX_MESSAGE))
        if not isinstance(answer, dict):
            raise ValueError("malformed answer")
        return answer

    def _poll_loop(self) -> None:
        while not self._closed.wait(self.poll):
            try:
                self.refresh()
            except (OSError, EOFError, ValueError, TimeoutError) as exc:
                if not self._closed.is_set():
                    self._snap = replace(self._snap, error=f"connection to the served run lost: {exc}")
                return

    def snapshot(self) -> Snapshot:
        return self._snap

    def refresh(self) -> Snapshot:
        """Fetch the served engine's latest snapshot now (histories: only what is new)."""
        with self._lock:  # one refresh at a time: the history lengths sent must be the ones appended to
            since = self._history.lengths()
            raw = self._call_locked({"op": "snapshot", "since": since})["snapshot"]
            for name, part in raw.pop("history").items():
                start = int(part["start"])
                if start < since.get(name, 0):
                    self._history.truncate(name, start)
                for value in np.asarray(part["data"], np.float64):
                    self._history.append(name, float(value))
            views = self._history.views()
        raw["free"] = tuple(raw["free"])
        previous = self._snap
        for name in _IMAGE_FIELDS:
            if isinstance(raw[name], str):  # _UNCHANGED: the one we have
                raw[name] = getattr(previous, name)
            else:
                raw[name] = None if raw[name] is None else np.asarray(raw[name], np.float32)
        if isinstance(raw["thumbnails"], str):
            raw["thumbnails"] = previous.thumbnails
        else:
            raw["thumbnails"] = {k: np.asarray(v, np.float32) for k, v in raw["thumbnails"].items()}
        self._snap = replace(Snapshot(), **raw, history=views)
        return self._snap

    def send(self, command, *args) -> commands.Command:
        cmd = command if isinstance(command, commands.Command) else commands.make(command, *args)
        answer = self._call({"op": "command", "kind": cmd.kind, "args": list(cmd.args())})
        if not answer.get("ok"):
            raise commands.CommandError(answer.get("error", "refused by the served engine"))
        return cmd

    # the rest of Engine's surface a viewer uses: the served process runs and records the engine
    def start_thread(self) -> None:
        pass

    def shutdown(self, timeout: float = 0.0) -> None:
        self.close()

    def close(self) -> None:
        self._closed.set()
        with self._lock:  # not in the middle of the poller's exchange
            self._conn.close()
