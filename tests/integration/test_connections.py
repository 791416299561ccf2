"""Connection age and client keepalive pings against the real server.

A client behind a Kubernetes Service keeps its one HTTP/2 connection on the
replica it first reached; ``--max-connection-age-s`` makes the server close
connections (GOAWAY after a grace for calls in flight) so clients reconnect
and spread over replicas. ``--min-client-ping-interval-s`` lets clients
send keepalive pings that grpc's default would punish with GOAWAY.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np

from highpeaks_ml.client import build_request
from highpeaks_ml.registry.local import LocalModelStore
from highpeaks_ml.v1 import predict_pb2_grpc
from tests.conftest import ServerProcess
from tests.support import serving_models as sm


def _seed(home: Path) -> np.ndarray:
    store = LocalModelStore(home)
    store.start()
    iris = sm.iris_logreg()
    store.publish("iris", iris.onnx, iris.meta)
    return iris.X


class Connections:
    """Counts how often a channel became READY (one per connection it opened)."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.ready = 0
        self.states: list[grpc.ChannelConnectivity] = []
        self._lock = threading.Lock()
        channel.subscribe(self._seen, try_to_connect=True)

    def _seen(self, state: grpc.ChannelConnectivity) -> None:
        with self._lock:
            self.states.append(state)
            if state == grpc.ChannelConnectivity.READY:
                self.ready += 1


def _channel(target: str, *options: tuple[str, int]) -> Iterator[grpc.Channel]:
    channel = grpc.insecure_channel(target, options=list(options))
    grpc.channel_ready_future(channel).result(timeout=10)
    return channel


def test_aged_connections_are_replaced_without_failing_a_call(
    home: Path, server_process: Callable[..., ServerProcess]
) -> None:
    X = _seed(home)
    server = server_process("--max-connection-age-s", "1", "--max-connection-age-grace-s", "5")
    channel = _channel(server.target)
    try:
        seen = Connections(channel)
        stub = predict_pb2_grpc.PredictServiceStub(channel)
        request = build_request("iris", X[:3])
        # A stream that outlives the age (within the grace) still gets every answer.
        stream_done: list[int] = []

        def slow_stream() -> Iterator:
            for _ in range(15):
                time.sleep(0.1)
                yield request

        def run_stream() -> None:
            stream_done.append(sum(1 for _ in stub.PredictStream(slow_stream(), timeout=30)))

        streamer = threading.Thread(target=run_stream)
        streamer.start()
        deadline = time.monotonic() + 3.5
        calls = 0
        while time.monotonic() < deadline:
            response = stub.Predict(request, timeout=10)  # raises on any failure
            assert list(response.labels.shape) == [3]
            calls += 1
            time.sleep(0.05)
        streamer.join(30)
        assert stream_done == [15]
        assert calls > 20
        # Opened at least once more after the first connection aged out.
        assert seen.ready >= 2, seen.states
    finally:
        channel.close()


def _idle_with_pings(target: str, seconds: float) -> Connections:
    channel = _channel(
        target,
        ("grpc.keepalive_time_ms", 1000),
        ("grpc.keepalive_timeout_ms", 5000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    )
    try:
        seen = Connections(channel)
        time.sleep(seconds)
        return seen
    finally:
        channel.close()


def test_client_keepalive_pings_within_the_allowed_interval_keep_the_connection(
    home: Path, server_process: Callable[..., ServerProcess]
) -> None:
    allowed = server_process("--min-client-ping-interval-s", "0.5")
    seen = _idle_with_pings(allowed.target, 5)
    assert seen.ready == 1 and seen.states[-1] == grpc.ChannelConnectivity.READY, seen.states
    # The control: pinging more often than allowed gets the connection closed
    # (GOAWAY too_many_pings), which is what grpc's 5-minute default does to
    # such clients.
    strict = server_process("--min-client-ping-interval-s", "60", home_dir=home.parent / "h2")
    seen = _idle_with_pings(strict.target, 5)
    assert grpc.ChannelConnectivity.READY in seen.states
    assert seen.states[-1] != grpc.ChannelConnectivity.READY or seen.ready >= 2, seen.states
