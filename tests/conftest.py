"""Shared hypothesis strategies and fixtures: the kernel tests' strategies, and one real
`q35f serve` process for the API client tests (test_serve.py: groq SDK, test_openai_client.py:
openai SDK)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

settings.register_profile(
    "q35f",
    deadline=None,
    max_examples=60,
    # no_array_copies checks once after all examples of a test, which is what we want.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture],
)
settings.load_profile("q35f")

BITS = ["q35", "int8", "int4", "int3"]

# Values that stress float16 parameters: subnormal, tiny, huge, and exactly representable ones.
EDGE_VALUES = [0.0, -0.0, 6e-8, -6e-8, 1e-5, 65504.0, -65504.0, 65000.0, 1.0, -1.0, 0.5]


@st.composite
def weight_matrices(draw, max_rows=40, max_cols=300):
    """(w, group_size): random shapes incl. ragged K, N = 1, constant groups and edge values."""
    rows = draw(st.integers(1, max_rows))
    cols = draw(st.integers(1, max_cols))
    group_size = draw(st.sampled_from([16, 32, 48, 64, 128, 256]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["normal", "scaled", "constant", "edges", "outliers"]))
    if kind == "normal":
        w = rng.standard_normal((rows, cols))
    elif kind == "scaled":
        w = rng.standard_normal((rows, cols)) * 10.0 ** draw(st.integers(-7, 4))
    elif kind == "constant":
        w = np.full((rows, cols), draw(st.floats(-1000, 1000, width=32)))
    elif kind == "edges":
        w = rng.choice(EDGE_VALUES, size=(rows, cols))
    else:
        w = rng.standard_normal((rows, cols)) * 0.02
        mask = rng.random((rows, cols)) < 0.01
        w[mask] = rng.choice([-30.0, 30.0], size=mask.sum())
    return w.astype(np.float32), group_size


@pytest.fixture
def no_array_copies(capfd):
    """Fail if f2py copied an array (the extension is built with F2PY_REPORT_ON_ARRAY_COPY)."""
    yield
    err = capfd.readouterr().err
    assert "copied an array" not in err and "created an array" not in err, err


# --- a real `q35f serve` subprocess ----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def free_port() -> int:
    """A loopback port nothing listens on (at the time of asking)."""
    return _free_port()


class Server:
    """`q35f serve` with the embedded SmolLM2-135M-Instruct on 127.0.0.1, an API key, a queue of
    one and a completion limit of max_tokens; requests time out after request_timeout s."""

    api_key = "test-key-q35f"
    max_tokens = 64
    startup_timeout = 180
    request_timeout = 180

    def __init__(self, proc: subprocess.Popen, port: int, log: Path):
        self.proc = proc
        self.port = port
        self.log = log
        self.url = f"http://127.0.0.1:{port}"

    def client(self, api_key: str | None = api_key):
        """The groq SDK's client (it appends /openai/v1/... to the server root)."""
        import groq

        return groq.Groq(base_url=self.url, api_key=api_key or "no-key", max_retries=0,
                         timeout=self.request_timeout)

    def health(self) -> dict:
        import httpx

        return httpx.get(f"{self.url}/health", timeout=10).json()

    def post(self, body, path="/openai/v1/chat/completions", api_key=api_key):
        import httpx

        headers = {"content-type": "application/json"}
        if api_key is not None:
            headers["authorization"] = f"Bearer {api_key}"
        content = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return httpx.post(self.url + path, content=content, headers=headers,
                          timeout=self.request_timeout)

    def wait_for(self, predicate, what: str, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.health()
            if predicate(state):
                return state
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; last state {state}")


@pytest.fixture(scope="session")
def server():
    """One server for the whole session (loading the model is the slow part); always stopped."""
    import httpx

    port = _free_port()
    log = Path(tempfile.mkdtemp(prefix="q35f-serve-")) / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "q35f", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--api-key", Server.api_key, "--max-queue", "1", "--max-tokens",
             str(Server.max_tokens), "--log-level", "warning"],
            stdout=out, stderr=subprocess.STDOUT)
    srv = Server(proc, port, log)
    try:
        deadline = time.monotonic() + Server.startup_timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"q35f serve exited with {proc.returncode}:\n"
                                     f"{log.read_text()}")
            try:
                if httpx.get(f"{srv.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"q35f serve not ready after {Server.startup_timeout} s:\n"
                                     f"{log.read_text()}")
            time.sleep(0.2)
        yield srv
        assert proc.poll() is None, f"the server died during the tests:\n{log.read_text()}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
