"""renderer.optim.remote: an engine served on 127.0.0.1 and driven by a client with the token — pause,
edit, target drag, histories that arrive incrementally; a wrong token, malformed and oversized messages
refused without harming the run; a client that leaves does not stop it."""

from __future__ import annotations

from multiprocessing.connection import AuthenticationError, Client

import numpy as np
import pytest
from drstudio.renderer.loading import load_scene
from drstudio.renderer.optim import commands as C
from drstudio.renderer.optim.engine import Engine
from drstudio.renderer.optim.problem import Problem
from drstudio.renderer.optim.remote import (
    MAX_MESSAGE,
    EngineServer,
    RemoteEngine,
    decode,
    encode,
    parse_address,
)
from test_recording import ALBEDO, LIGHT, tiny_scene


def test_messages_round_trip_and_refuse_malformed_input():
    msg = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": [1, "x", None, float("inf")],
           "c": {"d": np.array([True, False])}}
    back = decode(encode(msg))
    np.testing.assert_array_equal(back["a"], msg["a"])
    assert back["b"][:3] == [1, "x", None] and back["b"][3] == float("inf") and back["c"]["d"].dtype == bool
    good = encode({"a": np.zeros(4, np.float32)})
    for bad in (b"", b"\x05" + b"\x00" * 7 + b"{}", good[:-1], good + b"x",
                (10).to_bytes(8, "little") + b"not json!!",
                encode({"x": 1}).replace(b'"sizes": []', b'"sizes": [5]')):
        with pytest.raises(ValueError):
            decode(bad)
    header = b'{"body": {"__array__": 0, "dtype": "|O", "shape": [1]}, "sizes": [8]}'
    with pytest.raises(ValueError, match="malformed array"):
        decode(len(header).to_bytes(8, "little") + header + b"\x00" * 8)  # object arrays never decode
    assert parse_address(None) == ("127.0.0.1", 7391) and parse_address(":0") == ("127.0.0.1", 0)
    with pytest.raises(ValueError):
        parse_address("host:port")


@pytest.fixture()
def served(tmp_path):
    problem = Problem(load_scene(tiny_scene(tmp_path / "scene", size=12, steps=10**6)), "cpu")
    engine = Engine(problem, publish_images=True, image_interval=0.05)
    engine.start_thread()
    server = EngineServer(engine, problem, ("127.0.0.1", 0))
    try:
        yield engine, server
    finally:
        server.close()
        engine.shutdown()


def test_a_client_drives_a_served_run(served):
    engine, server = served
    client = RemoteEngine(server.address, server.token, poll=0.0)
    d = client.description
    assert set(d["param_specs"]) == {ALBEDO, LIGHT} and d["views"] and d["thumbnails"]
    client.send("start")
    engine.wait(lambda s: s.step >= 3)
    snap = client.refresh()
    assert snap.step >= 3 and snap.render is not None and snap.render.dtype == np.float32
    assert len(snap.history["loss"]) == snap.step and not snap.history["loss"].flags.writeable
    client.send(C.Pause())
    engine.wait(lambda s: s.state == "paused")
    n = engine.snapshot().commands_applied
    client.send("set_value", LIGHT, [1.0, 2.0, 2.0])
    client.send(C.SetTargetValue(LIGHT, np.array([1.4, 2.1, 2.4], np.float32)))  # a target drag
    engine.wait(lambda s: s.commands_applied >= n + 2)
    np.testing.assert_allclose(engine.problem.truth[LIGHT], [1.4, 2.1, 2.4])
    np.testing.assert_allclose(client.refresh().values[LIGHT], [1.0, 2.0, 2.0])
    with pytest.raises(C.CommandError, match="step count"):
        client.send("step", -3)
    client.send("step", 2)
    s0 = engine.snapshot().step
    engine.wait(lambda s: s.step >= s0 + 2 and s.state == "paused")
    snap = client.refresh()  # only new values travel each poll; the series stay whole on the client
    assert len(snap.history["loss"]) == engine.snapshot().step
    np.testing.assert_array_equal(snap.history["loss"], engine.snapshot().history["loss"])
    assert client.snapshot().step == snap.step  # the poller keeps snapshot() current without a round trip
    client.close()


def test_wrong_token_and_bad_messages_leave_the_run_going(served):
    engine, server = served
    engine.send("start")
    with pytest.raises(AuthenticationError):
        Client(server.address, family="AF_INET", authkey=b"wrong token")
    raw = Client(server.address, family="AF_INET", authkey=server.token.encode())
    raw.send_bytes(b"\x00" * 16)  # malformed: the server drops this client
    with pytest.raises((EOFError, OSError)):
        raw.recv_bytes()
    raw = Client(server.address, family="AF_INET", authkey=server.token.encode())
    with pytest.raises((EOFError, OSError)):  # oversized: refused from its length, the client dropped
        raw.send_bytes(b"\x00" * (MAX_MESSAGE + 1))
        raw.recv_bytes()
    step = engine.snapshot().step
    engine.wait(lambda s: s.step >= step + 3)  # still optimizing
    client = RemoteEngine(server.address, server.token)  # and a good client is served
    assert client.refresh().state == "running"
    client.close()  # a client that leaves does not stop the run
    engine.wait(lambda s: s.step >= step + 6)
    assert server.refused >= 1


def test_images_travel_once(served):
    """Snapshots polled faster than the engine re-renders send its images and thumbnails once: the same
    arrays again go as a marker, and the client keeps what it has (equal to the served images)."""
    from drstudio.renderer.optim.remote import _UNCHANGED, snapshot_message

    engine, _ = served
    engine.send("step", 1)
    engine.wait(lambda s: s.step >= 1 and s.state != "running" and s.render is not None)
    snap = engine.snapshot()
    sent: dict = {}
    first = snapshot_message(snap, {}, sent)
    again = snapshot_message(engine.snapshot(), {}, sent)
    assert isinstance(first["render"], np.ndarray) and first["thumbnails"]
    assert again["render"] == _UNCHANGED and again["thumbnails"] == _UNCHANGED
    assert len(encode(again)) < len(encode(first)) - 3 * 12 * 12 * 3 * 2  # at least the three 12x12 images
    assert isinstance(snapshot_message(snap, {}, {})["render"], np.ndarray)  # another client: all of it


def test_a_polling_client_keeps_the_images(served):
    engine, server = served
    client = RemoteEngine(server.address, server.token, poll=0.0)
    engine.send("step", 1)
    engine.wait(lambda s: s.step >= 1 and s.state != "running" and s.render is not None)
    a = client.refresh()
    b = client.refresh()  # nothing re-rendered in between: the images came once
    assert b.render is a.render and b.thumbnails is a.thumbnails and b.render is not None
    np.testing.assert_allclose(b.render, engine.snapshot().render, atol=1e-3)  # float16 on the wire
    client.close()
