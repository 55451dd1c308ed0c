"""The bridge worker (``liif-jax bridge``) over real pipes: every pixel format, malformed
input, cancellation, and a long session."""

import json
import math
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

import liif_jax
from conftest import TINY
from liif_jax.bridge import protocol

TINY_PTH = str(TINY / "tiny-liif.pth")


class Bridge:
    def __init__(self, weights=TINY_PTH):
        exe = os.path.join(os.path.dirname(sys.executable), "liif-jax")
        # On the CPU whatever the host has: the protocol is the same on every backend, and the
        # cancel tests need a job that outlasts the cancel, which a GPU might finish first.
        self.proc = subprocess.Popen([exe, "bridge", "--weights", weights], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=dict(os.environ, JAX_PLATFORMS="cpu"))

    def send(self, header: dict, payload: bytes = b"", raw: bytes | None = None):
        self.proc.stdin.write(raw if raw is not None else protocol.encode(header) + payload)
        self.proc.stdin.flush()

    def event(self, timeout=120):
        line = self.proc.stdout.readline()
        assert line, f"worker closed its output; stderr: {self.proc.stderr.read()[-2000:]!r}"
        message = json.loads(line)
        assert message["liif"] == 1
        if message.get("bytes"):
            message["payload"] = self.proc.stdout.read(message["bytes"])
        return message

    def final(self):
        """Skip progress events; return the result or error."""
        while True:
            message = self.event()
            if message["event"] != "progress":
                return message

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.fixture
def bridge():
    b = Bridge()
    yield b
    if b.proc.poll() is None:
        b.proc.kill()
    b.close()


def request(pixels, fmt, channels, **options):
    payload = np.ascontiguousarray(pixels).astype(protocol.FORMATS[fmt]).tobytes()
    h, w = pixels.shape[:2]
    return {"op": "upscale", "width": w, "height": h, "format": fmt, "channels": channels,
            "bytes": len(payload), **options}, payload


def sample(channels, fmt, h=13, w=17, seed=0):
    rng = np.random.default_rng(seed)
    n = protocol.CHANNELS[channels]
    x = rng.random((h, w, n), dtype=np.float32)
    if channels in ("RGBA", "GRAYA"):
        x[..., -1] = np.where(x[..., -1] < 0.3, 0.0, x[..., -1])
    if fmt == "u8":
        return np.rint(x * 255).astype(np.uint8)
    if fmt == "u16":
        return np.rint(x * 65535).astype(np.uint16)
    return x


@pytest.mark.parametrize("fmt", ["u8", "u16", "f32"])
@pytest.mark.parametrize("channels", ["RGB", "RGBA", "GRAY", "GRAYA"])
def test_round_trip_every_format(bridge, tiny_model, fmt, channels):
    pixels = sample(channels, fmt)
    header, payload = request(pixels, fmt, channels, scale=2.5, id="r1")
    bridge.send(header, payload)
    result = bridge.final()
    assert result["event"] == "result", result
    assert (result["width"], result["height"]) == (43, 33)  # floor(17 * 2.5 + 0.5), floor(13 * 2.5 + 0.5)
    assert result["format"] == fmt and result["channels"] == channels and result["id"] == "r1"
    assert result["compute_s"] > 0
    got = np.frombuffer(result["payload"], dtype=protocol.FORMATS[fmt]).reshape(33, 43, -1)
    lib_in = pixels[..., 0] if channels == "GRAY" else pixels
    expected = liif_jax.upscale(lib_in, scale=2.5, model=tiny_model)
    expected = expected.reshape(33, 43, -1)
    scale = {"u8": 255, "u16": 65535, "f32": 1}[fmt]
    assert np.abs(got.astype(np.float64) / scale - expected).max() <= 1.0 / scale + 1e-6


def test_progress_events_come_before_the_result(bridge):
    header, payload = request(sample("RGB", "u8", 40, 40), "u8", "RGB", scale=3)
    bridge.send(header, payload)
    events = []
    while True:
        e = bridge.event()
        events.append(e)
        if e["event"] != "progress":
            break
    assert events[-1]["event"] == "result"
    progress = [e for e in events if e["event"] == "progress"]
    assert progress and progress[-1]["done"] == progress[-1]["total"] == 120 * 120


@pytest.mark.parametrize("raw,code", [
    (b"this is not json\n", "bad_header"),
    (b"[1, 2, 3]\n", "bad_header"),
    (protocol.encode({"op": "frobnicate"}), "bad_request"),
    (b'{"liif": 7, "op": "ping"}\n', "bad_version"),
    (b"{" + b" " * (70 * 1024) + b"}\n", "bad_header"),
])
def test_malformed_messages_get_errors_and_the_worker_stays_healthy(bridge, raw, code):
    bridge.send({}, raw=raw)
    error = bridge.event()
    assert error["event"] == "error" and error["code"] == code
    assert "\n" not in error["message"]
    bridge.send({"op": "ping", "id": 5})
    pong = bridge.event()
    assert pong["event"] == "pong" and pong["id"] == 5 and pong["protocol"] == 1


def test_bad_requests_skip_their_payload_and_the_next_request_works(bridge):
    pixels = sample("RGB", "u8")
    header, payload = request(pixels, "u8", "RGB", scale=2)
    cases = [
        ({**header, "bytes": len(payload) - 3}, payload[:-3], "bad_request", "'bytes' must be"),
        ({**header, "channels": "CMYK"}, payload, "bad_request", "'channels'"),
        ({**header, "width": 0}, payload, "bad_request", "'width'"),
        ({k: v for k, v in header.items() if k != "scale"}, payload, "bad_request", "exactly one"),
        ({**header, "scale": -1}, payload, "request", "> 0"),
        ({**header, "scale": 1000}, payload, "request", "over the limit"),
        ({**header, "region": [0, 0, 99, 99]}, payload, "request", "outside"),
        ({**header, "precision": "float8"}, payload, "request", "precision"),
    ]
    for bad, body, code, text in cases:
        bridge.send(bad, body)
        error = bridge.final()
        assert error["event"] == "error" and error["code"] == code and text in error["message"], (bad, error)
    bridge.send(header, payload)
    assert bridge.final()["event"] == "result"


def test_absurd_sizes_are_refused_without_holding_the_payload(bridge):
    """Refused at once; the announced payload is then skipped (streamed and dropped, never
    held), so its bytes are not read as headers."""
    bridge.send({"op": "upscale", "width": 100_000, "height": 100_000, "format": "f32",
                 "channels": "RGBA", "bytes": 100_000 * 100_000 * 16, "scale": 2})
    error = bridge.event()
    assert error["code"] == "too_large"
    bridge.send({}, raw=b'{"liif":1,"op":"ping"}\n' * 100_000)  # payload bytes, not requests
    bridge.proc.stdin.close()
    error = bridge.event()
    assert error["code"] == "short_payload"  # the stream ended inside that payload
    assert bridge.proc.wait(timeout=60) == 1
    # Whose payload does arrive: the stream stays in step.
    b = Bridge()
    try:
        b.send({"op": "upscale", "width": 100_000, "height": 100_000, "format": "u8",
                "channels": "RGB", "bytes": 1000, "scale": 2}, b"\n" * 1000)
        assert b.event()["code"] == "too_large"
        b.send({"op": "ping"})
        assert b.event()["event"] == "pong"
    finally:
        b.close()


def test_short_payload_at_end_of_stream(bridge):
    header, payload = request(sample("RGB", "u8"), "u8", "RGB", scale=2)
    bridge.send(header, payload[:100])
    bridge.proc.stdin.close()
    error = bridge.event()
    assert error["code"] == "short_payload"
    assert bridge.proc.wait(timeout=60) == 1


def _start_long_job(bridge):
    """A 2880 x 2880 job (seconds of work, hundreds of chunks), seen running."""
    header, payload = request(sample("RGB", "u8", 48, 48), "u8", "RGB", scale=60, id="long",
                              max_pixels=0)
    bridge.send(header, payload)
    first = bridge.event()
    assert first["event"] == "progress", first  # it is running
    return first


def _stopped_part_way(events):
    """The job's events end in "cancelled", and no report reached the end: the worker stopped
    at a chunk boundary before the last chunk (a finished job reports done == total)."""
    assert events and events[-1]["event"] == "error" and events[-1]["code"] == "cancelled", events[-3:]
    progress = events[:-1]
    assert all(e["event"] == "progress" and e["done"] < e["total"] == 2880 * 2880 for e in progress), progress[-3:]


def _events_to_the_end(bridge):
    """Every event the worker wrote before it exited (read once it has exited)."""
    return [json.loads(line) for line in bridge.proc.stdout.read().splitlines()]


def test_cancel_message_stops_the_job_and_the_worker_goes_on(bridge):
    first = _start_long_job(bridge)
    bridge.send({"op": "cancel"})
    events = [first]
    while events[-1]["event"] == "progress":
        events.append(bridge.event())
    _stopped_part_way(events)
    assert events[-1]["id"] == "long"
    header, payload = request(sample("GRAY", "u8"), "u8", "GRAY", size=[20, 10])
    bridge.send(header, payload)
    result = bridge.final()
    assert result["event"] == "result" and (result["width"], result["height"]) == (20, 10)


def test_closing_stdin_cancels_the_job_and_ends_the_worker(bridge):
    first = _start_long_job(bridge)
    bridge.proc.stdin.close()
    assert bridge.proc.wait(timeout=120) == 0  # (a guard against a hang only)
    _stopped_part_way([first, *_events_to_the_end(bridge)])


def test_sigterm_cancels_the_job_and_ends_the_worker(bridge):
    first = _start_long_job(bridge)
    bridge.proc.send_signal(signal.SIGTERM)
    assert bridge.proc.wait(timeout=120) == 0  # (a guard against a hang only)
    _stopped_part_way([first, *_events_to_the_end(bridge)])


def test_twenty_requests_in_a_row_one_model_load(bridge):
    for i in range(20):
        w, scale = 11, 1.5 + i / 10
        header, payload = request(sample("RGBA", "u8", 9 + i % 3, w, seed=i), "u8", "RGBA", scale=scale, id=i)
        bridge.send(header, payload)
        result = bridge.final()
        assert result["event"] == "result" and result["id"] == i
        size = (math.floor(w * scale + 0.5), math.floor((9 + i % 3) * scale + 0.5))
        assert (result["width"], result["height"]) == size and len(result["payload"]) == size[0] * size[1] * 4
    bridge.send({"op": "ping"})
    assert bridge.event()["model"] == "tiny-liif.pth"
    bridge.send({"op": "quit"})
    assert bridge.proc.wait(timeout=30) == 0


def test_bad_weights_are_a_checkpoint_error_not_a_crash(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"nope")
    b = Bridge(weights=str(bad))
    try:
        header, payload = request(sample("RGB", "u8"), "u8", "RGB", scale=2)
        b.send(header, payload)
        error = b.final()
        assert error["code"] == "checkpoint" and "neither a liif-jax .safetensors file nor a PyTorch checkpoint" in error["message"]
        b.send({"op": "ping"})
        assert b.event()["event"] == "pong"
    finally:
        b.close()


def test_sigterm_while_idle_exits_promptly_every_time():
    """Regression: a SIGTERM landing while the worker waits for work (inside Queue.get)
    deadlocked it when the handler touched the queue. Repeat to hit the race."""
    for _ in range(5):
        b = Bridge()
        try:
            b.send({"op": "ping"})
            assert b.event()["event"] == "pong"  # now idle in its queue
            b.proc.send_signal(signal.SIGTERM)
            assert b.proc.wait(timeout=60) == 0  # (the deadlock hung forever; the bound only ends the test)
        finally:
            if b.proc.poll() is None:
                b.proc.kill()
            b.close()


def test_client_close_after_success_does_not_hang(tiny_model):
    import sys as _sys

    from conftest import REPO

    _sys.path.insert(0, str(REPO / "gimp_plugin"))
    import liif_bridge_client

    from test_bridge_transport import within

    client = liif_bridge_client.BridgeClient(_sys.executable, weights=TINY_PTH, start_server=False)
    for _ in range(3):  # each call returns (within a generous bound: a guard against a hang only)
        w, h, data, _, kind = within(120, lambda: client.upscale(12, 10, "RGB", "u8", bytes(360), scale=2.0))
        assert (w, h, len(data), kind) == (24, 20, 24 * 20 * 3, "subprocess")
