"""``slimmable serve``: endpoints, bad requests, concurrency, drain, and the width policy."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image
from prometheus_client import generate_latest

import slimmable
from slimmable.checkpoint import save_checkpoint
from slimmable.cli import main
from slimmable.serve import ServeConfig, SlimmableService, load_backend, make_server
from slimmable.serve.model import decode_image
from slimmable.serve.policy import ArrivalRate, LatencyTable, batch_sizes, choose_width

DIGITS = {"name": "digits", "mean": [0.3], "std": [0.4], "in_chans": 1, "image_size": 8}


# ---- the policy, without a server -------------------------------------------------------------
TABLE = LatencyTable({0.25: {1: 2.0, 8: 9.0}, 0.5: {1: 4.0, 8: 20.0}, 1.0: {1: 10.0, 8: 45.0}})


def test_policy_picks_the_widest_width_that_meets_the_slo():
    widths = [0.25, 0.5, 1.0]
    assert choose_width(TABLE, widths, batch=1, waited_ms=0.0, slo_ms=50.0) == 1.0
    assert choose_width(TABLE, widths, batch=8, waited_ms=0.0, slo_ms=50.0) == 1.0
    assert choose_width(TABLE, widths, batch=8, waited_ms=10.0, slo_ms=50.0) == 0.5  # 10+45 > 50
    assert choose_width(TABLE, widths, batch=8, waited_ms=35.0, slo_ms=50.0) == 0.25
    assert choose_width(TABLE, widths, batch=8, waited_ms=45.0, slo_ms=50.0) == 0.25  # none: min
    assert choose_width(TABLE, [0.5, 1.0], batch=1, waited_ms=0.0, slo_ms=5.0) == 0.5
    # the queue must not grow: at 0.2 images/ms a full-width batch of 8 (45 ms) lets 9 arrive
    assert choose_width(TABLE, widths, 8, 0.0, 50.0, arrival_rate=0.2) == 0.5  # 4 arrive
    assert choose_width(TABLE, widths, 8, 0.0, 50.0, arrival_rate=0.1) == 1.0  # 4.5 arrive
    assert choose_width(TABLE, widths, 1, 0.0, 50.0, arrival_rate=0.2) == 0.5  # 2 vs 0.8
    assert choose_width(TABLE, widths, 1, 0.0, 50.0, arrival_rate=1.0) == 0.25  # none: min
    # ... with slack: at utilisation 0.6, width 0.5 (0.6 of 1 image arriving) still qualifies,
    # at 0.2 images/ms (0.8 arriving) it does not
    assert choose_width(TABLE, widths, 1, 0.0, 50.0, 0.8, 0.15, utilisation=0.6) == 0.5
    assert choose_width(TABLE, widths, 1, 0.0, 50.0, 0.8, 0.2, utilisation=0.6) == 0.25
    # headroom: only 80% of the SLO is planned with

    assert choose_width(TABLE, widths, batch=8, waited_ms=0.0, slo_ms=50.0, headroom=0.8) == 0.5


def test_latency_table_interpolates_extrapolates_and_learns():
    assert TABLE.predict(1.0, 1) == 10.0
    assert TABLE.predict(1.0, 4) == pytest.approx(10.0 + 35.0 * 3 / 7)
    assert TABLE.predict(1.0, 16) == pytest.approx(45.0 + 5.0 * 8)  # slope of the last two
    table = LatencyTable({1.0: {1: 10.0, 8: 45.0}}, alpha=0.5)
    table.update(1.0, 8, 65.0)
    assert table.predict(1.0, 8) == pytest.approx(55.0)
    assert table.predict(1.0, 1) == pytest.approx(10.0 * (0.5 + 0.5 * 65 / 45))  # all slow
    table.update(1.0, 4, 0.0)
    assert table.scale == pytest.approx(0.5 * 65 / 45 / 2 + 0.25)
    assert LatencyTable({1.0: {2: 6.0}}).predict(1.0, 3) == pytest.approx(9.0)
    assert batch_sizes(16) == [1, 2, 4, 8, 16] and batch_sizes(6) == [1, 2, 4, 6]
    with pytest.raises(ValueError):
        LatencyTable({})


def test_arrival_rate_counts_the_recent_window():
    rate = ArrivalRate(window_ms=1000.0)
    assert rate.rate(0.0) == 0.0
    for t in range(0, 2000, 100):  # 2 images every 100 ms
        rate.add(float(t), 2)
    assert rate.rate(2000.0) == pytest.approx(0.02, rel=0.15)
    assert rate.rate(10_000.0) == 0.0  # nothing recent


def test_the_server_plans_with_the_arrival_rate():
    """The batcher passes the recent arrival rate to the policy: with requests arriving faster
    than full width clears them, a batch that would meet the SLO on its own runs narrower."""
    from types import SimpleNamespace

    from slimmable.serve.app import Batcher, Metrics, _Job

    widths = [0.25, 0.5, 1.0]
    backend = SimpleNamespace(card=SimpleNamespace(width_values=widths))
    config = ServeConfig(slo_ms=50.0, headroom=1.0, utilisation=1.0)
    batcher = Batcher(backend, config, TABLE, Metrics(widths))
    assert batcher.choose(None, 8, 0.0) == 1.0  # nothing has arrived: 45 ms fits in 50
    now = time.perf_counter()
    for i in range(200):  # 0.2 images per ms over the last second
        job = _Job(np.zeros((1, 1, 8, 8)), None, 1, now - 1.0 + i * 0.005, None, None)
        batcher.arrivals.add(1e3 * job.arrived, 1)
    assert batcher.choose(None, 8, 0.0) == 0.5  # 9 would arrive during a full-width batch of 8
    assert batcher.choose(0.25, 8, 0.0) == 0.25  # a pinned width is served as asked


def test_config_refuses_contradictions():
    with pytest.raises(ValueError, match="--policy fixed"):
        ServeConfig(policy="adaptive", width=0.5)
    with pytest.raises(ValueError, match="--slo-ms"):
        ServeConfig(slo_ms=0)
    with pytest.raises(ValueError, match="--utilisation"):
        ServeConfig(utilisation=1.5)
    with pytest.raises(ValueError, match="--policy must be"):
        ServeConfig(policy="fast")


# ---- a server on 127.0.0.1 --------------------------------------------------------------------
def _checkpoint(path) -> str:
    torch.manual_seed(0)
    model = slimmable.create_model("s_small_cnn", num_classes=10)
    save_checkpoint(
        path,
        {
            "model": {"name": "s_small_cnn", "kwargs": {"num_classes": 10}},
            "state_dict": model.state_dict(),
            "input_size": [1, 8, 8],
            "data": DIGITS,
            "eval": [{"width": w, "top1": 0.5 + w / 4} for w in (0.25, 0.5, 0.75, 1.0)],
        },
    )
    return str(path)


class Client:
    def __init__(self, port: int) -> None:
        self.port = port

    def request(self, method: str, path: str, body: bytes | None = None, headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            data = r.read()
            return r.status, data, r.getheader("content-type")
        finally:
            conn.close()

    def predict(self, payload) -> tuple[int, dict]:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        status, data, _ = self.request("POST", "/v1/predict", body)
        return status, json.loads(data)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    torch.set_num_threads(1)
    ckpt = _checkpoint(tmp_path_factory.mktemp("serve") / "ck.pt")
    backend = load_backend(ckpt)
    config = ServeConfig(policy="adaptive", slo_ms=1000.0, max_batch=8, max_body_bytes=200_000)
    service = SlimmableService(backend, config)
    srv = make_server(service, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.02)
    port = srv.servers[0].sockets[0].getsockname()[1]
    yield Client(port), service
    srv.should_exit = True
    thread.join(30)


def _png(array: np.ndarray, mode: str = "L") -> str:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_predict_an_image_preprocessed_as_the_data_set(server):
    client, service = server
    pixels = (np.arange(64).reshape(8, 8) * 4).astype(np.uint8)
    status, body = client.predict({"image": _png(pixels), "top_k": 3})
    assert status == 200, body
    assert body["width"] == 1.0 and body["latency_ms"] > 0  # a loose SLO: full width
    (pred,) = body["predictions"]
    assert pred["top_k"][0]["label"] == pred["label"]
    scores = [p["score"] for p in pred["top_k"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 3
    # the same image sent as preprocessed inputs gives the same answer
    x = (pixels.astype(np.float32) / 255.0 - 0.3) / 0.4
    np.testing.assert_allclose(
        decode_image(base64.b64decode(_png(pixels)), service.backend.card)[0], x, atol=1e-6
    )
    status, same = client.predict({"inputs": x[None, None].tolist(), "top_k": 3})
    assert status == 200 and same["predictions"] == body["predictions"]
    model = service.backend.model
    with torch.no_grad():
        probs = torch.softmax(model(torch.from_numpy(x[None, None])), 1)[0]
    assert pred["label"] == int(probs.argmax()) and pred["score"] == pytest.approx(
        float(probs.max()), rel=1e-5
    )


def test_predict_a_batch_at_a_pinned_width(server):
    client, _ = server
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).tolist()
    status, body = client.predict({"inputs": x, "width": 0.25})
    assert status == 200 and body["width"] == 0.25 and len(body["predictions"]) == 3
    assert set(body["predictions"][0]) == {"label", "score"}


def test_health_widths_and_metrics(server):
    client, _ = server
    status, data, _ = client.request("GET", "/v1/health")
    health = json.loads(data)
    assert status == 200 and health["status"] == "ok" and health["widths"] == [0.25, 0.5, 0.75, 1.0]
    status, data, _ = client.request("GET", "/v1/widths")
    rows = json.loads(data)["widths"]
    assert status == 200 and [r["width"] for r in rows] == [0.25, 0.5, 0.75, 1.0]
    assert [r["top1"] for r in rows] == [0.5625, 0.625, 0.6875, 0.75]
    assert all(r["macs"] > 0 and r["latency_ms"] > 0 for r in rows)
    assert rows[0]["macs"] < rows[-1]["macs"]
    assert json.loads(data)["top1_source"] == "checkpoint"
    client.predict({"inputs": np.zeros((2, 1, 8, 8)).tolist(), "width": 0.5})
    status, data, ctype = client.request("GET", "/metrics")
    text = data.decode()
    assert status == 200 and ctype.startswith("text/plain")
    assert 'slimmable_requests_total{endpoint="predict",status="200"}' in text
    assert "slimmable_request_latency_seconds_bucket" in text
    served = [
        line for line in text.splitlines() if line.startswith('slimmable_images_total{width="0.5"}')
    ]
    assert served and float(served[0].split()[-1]) >= 2


BAD = [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "must be a JSON object"),
    (b'{"image": "a", "inputs": []}', 400, "exactly one of"),
    (b'{"images": "a"}', 400, "unknown field"),
    (b'{"image": "@@not base64@@"}', 400, "not valid base64"),
    (
        json.dumps({"image": base64.b64encode(b"GIF89a garbage").decode()}).encode(),
        415,
        "cannot be decoded",
    ),
    (json.dumps({"inputs": np.zeros((1, 3, 8, 8)).tolist()}).encode(), 422, "N x 1 x 8 x 8"),
    (json.dumps({"inputs": np.zeros((1, 1, 9, 8)).tolist()}).encode(), 422, "N x 1 x 8 x 8"),
    (json.dumps({"inputs": [[1, 2], [3]]}).encode(), 422, "nested list"),
    (json.dumps({"inputs": np.zeros((8, 8)).tolist()}).encode(), 422, "N x C x H x W"),
    (
        json.dumps({"inputs": np.zeros((1, 1, 8, 8)).tolist(), "width": 0.3}).encode(),
        422,
        "not served",
    ),
    (
        json.dumps({"inputs": np.zeros((1, 1, 8, 8)).tolist(), "width": 2.0}).encode(),
        422,
        "not served",
    ),
    (
        json.dumps({"inputs": np.zeros((1, 1, 8, 8)).tolist(), "width": "big"}).encode(),
        422,
        "finite number",
    ),
    (json.dumps({"inputs": np.zeros((1, 1, 8, 8)).tolist(), "top_k": 0}).encode(), 422, "top_k"),
    (json.dumps({"inputs": np.zeros((9, 1, 8, 8)).tolist()}).encode(), 413, "at most 8 images"),
    (b"[" * 100_000, 400, "nested too deeply"),
    (b'{"inputs": "abc"}', 422, "nested list"),
    (b"\xff\xfe", 400, "not valid JSON"),
]


@pytest.mark.parametrize("body, status, message", BAD)
def test_bad_requests_get_a_4xx_with_a_one_line_json_error(server, body, status, message):
    client, _ = server
    got, answer = client.predict(body)
    assert got == status and message in answer["error"], answer
    assert "\n" not in answer["error"] and set(answer) == {"error"}


def test_a_huge_image_is_refused_before_it_is_decoded(server):
    client, _ = server
    buf = io.BytesIO()
    Image.new("L", (8000, 6000)).save(buf, "PNG")  # 48 M pixels, a few kB compressed
    status, answer = client.predict({"image": base64.b64encode(buf.getvalue()).decode()})
    assert status == 415 and "pixels" in answer["error"]


def test_oversized_bodies_are_refused_before_they_are_read(server):
    client, _ = server
    # a declared length over the limit: refused from the header
    conn = http.client.HTTPConnection("127.0.0.1", client.port, timeout=30)
    conn.putrequest("POST", "/v1/predict")
    conn.putheader("Content-Length", str(10_000_000))
    conn.endheaders()
    conn.send(b"{" * 1000)
    r = conn.getresponse()
    assert r.status == 413 and "limit" in json.loads(r.read())["error"]
    conn.close()

    # no declared length (chunked): refused once the stream passes the limit
    def chunks():
        for _ in range(50):
            yield b" " * 10_000

    conn = http.client.HTTPConnection("127.0.0.1", client.port, timeout=30)
    conn.request("POST", "/v1/predict", body=chunks(), encode_chunked=True)
    r = conn.getresponse()
    assert r.status == 413
    conn.close()
    for method, path, status in (("GET", "/v1/predict", 405), ("GET", "/nope", 404)):
        got, data, _ = client.request(method, path)
        assert got == status and "error" in json.loads(data)
    assert client.request("GET", "/v1/health")[0] == 200  # still up


def test_hundreds_of_concurrent_requests_are_all_answered(server):
    client, service = server
    rng = np.random.default_rng(1)
    payloads = [
        {
            "inputs": rng.standard_normal((1 + i % 3, 1, 8, 8)).tolist(),
            **({"width": 0.5} if i % 5 == 0 else {}),
        }
        for i in range(320)
    ]
    batches_before = service.batcher.batches
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(client.predict, payloads))
    assert [s for s, _ in answers] == [200] * 320
    for payload, (_, body) in zip(payloads, answers):
        assert len(body["predictions"]) == len(payload["inputs"])
        if "width" in payload:
            assert body["width"] == 0.5
    assert service.batcher.batches - batches_before < 320  # some requests shared a batch


DRAIN_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from slimmable.serve import ServeConfig, SlimmableService, load_backend, make_server
    from slimmable.serve.policy import LatencyTable

    class Gated:  # batches wait for the test's go-ahead, so requests are in flight at SIGTERM
        def __init__(self, inner, gate):
            self.inner, self.card, self.gate = inner, inner.card, gate
        def check_width(self, w):
            return self.inner.check_width(w)
        def run(self, x, w):
            deadline = time.time() + 120
            while not os.path.exists(self.gate) and time.time() < deadline:
                time.sleep(0.02)
            return self.inner.run(x, w)

    backend = Gated(load_backend(sys.argv[1]), sys.argv[3])
    table = LatencyTable({w: {1: 1.0} for w in backend.card.width_values})
    service = SlimmableService(backend, ServeConfig(max_batch=1), table)
    make_server(service, "127.0.0.1", int(sys.argv[2])).run()
    print("drained", service.batcher.batches, flush=True)
    """
)


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if condition():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_drains_requests_in_flight_and_exits_cleanly(tmp_path):
    ckpt = _checkpoint(tmp_path / "ck.pt")
    port, gate = _free_port(), tmp_path / "go"
    script = tmp_path / "drain.py"
    script.write_text(DRAIN_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(script), ckpt, str(port), str(gate)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True)
    client = Client(port)

    def health() -> dict:
        status, data, _ = client.request("GET", "/v1/health")
        return json.loads(data) if status == 200 else {}

    try:
        _wait_for(lambda: health().get("status") == "ok", 300, "the server's start")
        x = {"inputs": np.zeros((1, 1, 8, 8)).tolist()}
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(client.predict, x) for _ in range(4)]
            # one batch held at the gate, three requests queued behind it: all four in flight
            _wait_for(lambda: health().get("queued_images") == 3, 120, "four requests in flight")
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)  # the server is draining now
            gate.touch()
            answers = [f.result(timeout=120) for f in futures]
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert [s for s, _ in answers] == [200] * 4
    assert proc.returncode == 0 and "drained 4" in out
    with pytest.raises(OSError):
        client.request("GET", "/v1/health")


def test_cli_serve_bad_input_is_one_line(capsys):
    assert main(["serve", "no_such_model_or_file"]) == 2
    err = capsys.readouterr().err
    assert "neither a file nor a registered model" in err and len(err.strip().splitlines()) == 1
    assert main(["serve", "s_small_cnn", "--width", "0.5"]) == 2
    assert "--policy fixed" in capsys.readouterr().err


class _Gated:
    """A backend whose batches wait until ``gate`` is set."""

    def __init__(self, inner, gate: threading.Event) -> None:
        self.inner, self.card, self.gate = inner, inner.card, gate

    def check_width(self, w):
        return self.inner.check_width(w)

    def run(self, x, w):
        self.gate.wait(60)
        return self.inner.run(x, w)


def test_a_request_whose_client_left_is_not_computed(tmp_path):
    gate = threading.Event()
    backend = _Gated(load_backend(_checkpoint(tmp_path / "ck.pt")), gate)
    table = LatencyTable({w: {1: 1.0} for w in backend.card.width_values})
    service = SlimmableService(backend, ServeConfig(max_batch=1), table)
    srv = make_server(service, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    try:
        _wait_for(lambda: srv.started, 60, "the server's start")
        client = Client(srv.servers[0].sockets[0].getsockname()[1])
        body = json.dumps({"inputs": np.zeros((1, 1, 8, 8)).tolist()}).encode()
        with ThreadPoolExecutor(1) as pool:
            kept = pool.submit(client.predict, body)  # held at the gate
            _wait_for(lambda: service.batcher.running == 1, 30, "the first batch")
            with socket.create_connection(("127.0.0.1", client.port)) as s:  # leaves early
                head = (
                    f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
                )
                s.sendall(head.encode() + body)
                _wait_for(lambda: service.batcher.queued_images() == 1, 30, "the second request")
            gone = 'slimmable_requests_total{endpoint="predict",status="499"} 1.0'
            text = lambda: generate_latest(service.metrics.registry).decode()  # noqa: E731
            _wait_for(lambda: gone in text(), 30, "the disconnect")
            gate.set()
            assert kept.result(30)[0] == 200
        _wait_for(lambda: service.batcher.dropped == 1, 30, "the drop")
        assert service.batcher.batches == 1
    finally:
        gate.set()
        srv.should_exit = True
        thread.join(30)


def test_the_policy_simulation_keeps_the_slo_and_the_accuracy():
    """benchmarks/serve_policy.py's batcher model, on the policy test's latency table: at light
    load it serves full width; at a load full width cannot sustain it serves narrower within
    the SLO, and a lower utilisation bound never serves wider."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "serve_policy.py"
    spec = importlib.util.spec_from_file_location("serve_policy", path)
    sim = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sim)
    table = {w: dict(sizes) for w, sizes in TABLE.points.items()}
    kw = {"headroom": 0.8, "max_batch": 8, "seconds": 20.0, "noise": 0.1, "overhead_ms": 1.0}

    def run(rate, u):
        lat, served = sim.simulate(table, rate, 50.0, utilisation=u, seed=0, **kw)
        lat.sort()
        return lat[int(0.99 * (len(lat) - 1))], sum(served) / len(served)

    p99, mean_width = run(20.0, 0.6)  # a fifth of full width's 100/s
    assert mean_width > 0.9 and p99 < 50.0
    p99, mean_width = run(150.0, 0.6)  # 1.5x full width's capacity
    assert mean_width < 0.75 and p99 < 50.0
    assert run(150.0, 0.5)[1] <= run(150.0, 0.9)[1]
