"""Shared fixtures: a scripted OpenAI-compatible server on 127.0.0.1, and small judge projects."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from pytest_judgeopt.llm import import_litellm
from tests.fake_llm import FakeLLMServer

# No per-example deadline for any property test: a time limit fails on a loaded machine, not on a slow
# input (how fast things are is measured in benchmarks/).
settings.register_profile("judgeopt", deadline=None)
settings.load_profile("judgeopt")

CRITERIA = ("coherence", "fluency")


@pytest.fixture
def fake_llm() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        yield server


class RedisServer:
    """A real ``redis-server`` on a free 127.0.0.1 port, persistence off (nothing written to disk), stopped after the test."""

    def __init__(self, directory: Path, *extra: str, tls: bool = False):
        self.directory = directory
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        # TLS only (no plain port), with a throwaway self-signed certificate for 127.0.0.1, its own CA
        self.certificate = directory / "redis.crt" if tls else None

    @property
    def url(self) -> str:
        if self.certificate is not None:  # the client checks the server against this CA (redis-py's URL parameter)
            return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.certificate}"
        return f"redis://127.0.0.1:{self.port}/0"

    def listen(self) -> list[str]:
        if self.certificate is None:
            return ["--port", str(self.port)]
        key = self.directory / "redis.key"
        if not self.certificate.exists():
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                            str(self.certificate), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext",
                            "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
        return ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.certificate), "--tls-key-file",
                str(key), "--tls-ca-cert-file", str(self.certificate), "--tls-auth-clients", "no"]

    def start(self) -> RedisServer:
        for _ in range(5):  # the free port may be taken between finding it and the server binding it
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.port = s.getsockname()[1]
            self.process = subprocess.Popen(
                ["redis-server", *self.listen(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(self.directory), *self.extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if self._ready():
                return self
            self.stop()
        raise RuntimeError("redis-server did not start")

    def _ready(self) -> bool:
        deadline = time.monotonic() + 30  # waiting for the server to listen, not a bound on anything tested
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as plain:
                    conn = plain
                    if self.certificate is not None:
                        conn = ssl.create_default_context(cafile=str(self.certificate)).wrap_socket(
                            plain, server_hostname="127.0.0.1")
                    with conn:
                        conn.sendall(b"PING\r\n")
                        if conn.recv(64).startswith(b"+PONG"):
                            return True
            except OSError:
                time.sleep(0.05)
        return False

    def client(self) -> Any:
        import redis

        if self.certificate is not None:
            return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, ssl=True,
                               ssl_ca_certs=str(self.certificate))
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def kill(self) -> None:
        """SIGKILL, as a crashed or unplugged server: no goodbye to the clients."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., RedisServer]]:
    """Start real Redis servers (extra arguments: ``--maxmemory 1mb`` ...; ``tls=True``: TLS only, which needs
    openssl for its certificate); skips only when a binary is absent."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (.ci/run installs Debian's redis-server)")
    started: list[RedisServer] = []

    def start(*extra: str, tls: bool = False) -> RedisServer:
        if tls and shutil.which("openssl") is None:
            pytest.skip("openssl is not installed (it makes the TLS server's certificate)")
        server = RedisServer(tmp_path_factory.mktemp("redis"), *extra, tls=tls).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def make_records(n_groups: int = 6, per_group: int = 4, criteria: tuple[str, ...] = CRITERIA) -> list[dict[str, Any]]:
    """Records whose human scores vary within and across groups, deterministically."""
    records = []
    for g in range(n_groups):
        for i in range(per_group):
            scores = {c: float(1 + (g * 7 + i * 3 + k * 2) % 5) for k, c in enumerate(criteria)}
            records.append({"id": f"d{g}-s{i}", "group": f"d{g}", "source": f"Article {g}. Facts {g * 3}.",
                            "summary": f"Summary {i} of article {g}.", "scores": scores})
    return records


# make_records()'s test split holds 2 documents, too few for an interval (correlation.min_groups), so ::merged
# cannot show that merging costs nothing: tests about where answers come from let that inconclusive verdict pass
FEW_DOCUMENTS = "interference: {inconclusive: pass}\n"


def spec_text(model: str | dict[str, Any] | None, *, criteria: tuple[str, ...] = CRITERIA, min_rho: float = 0.5,
              extra: str = "", data: str = "data.jsonl") -> str:
    model_line = "" if model is None else f"model: {json.dumps(model)}\n"
    crit = "".join(f"  {c}:\n    instruction: Rate the {c} from 1 to 5.\n    scale: [1, 5]\n    min_rho: {min_rho}\n"
                   for c in criteria)
    return (f"name: toy\n{model_line}dataset:\n  path: {data}\n  group: group\n"
            f"  inputs: {{source: source, summary: summary}}\n  scores: scores\n"
            f"split: {{train: 0.25, val: 0.25, test: 0.5, seed: 1}}\n{textwrap.dedent(extra)}criteria:\n{crit}")


def server_model(server: FakeLLMServer) -> dict[str, Any]:
    return {"name": "openai/fake-judge", "api_base": server.base_url, "api_key": "sk-test-not-a-real-key"}


@pytest.fixture
def make_project(tmp_path: Path) -> Callable[..., Path]:
    """Write a spec and its data into a folder; returns the spec's path."""

    def make(model: str | dict[str, Any] | None, *, records: list[dict[str, Any]] | None = None,
             folder: Path | None = None, name: str = "toy.judge.yaml", **spec_args: Any) -> Path:
        root = folder or tmp_path
        root.mkdir(parents=True, exist_ok=True)
        rows = make_records() if records is None else records
        (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        spec = root / name
        spec.write_text(spec_text(model, **spec_args))
        return spec

    return make


def human_from_prompt(records: list[dict[str, Any]]) -> Callable[[dict[str, Any]], str]:
    """A responder that knows the human scores: it answers each criterion asked with the true score."""
    by_summary = {r["summary"]: r for r in records}

    def respond(body: dict[str, Any]) -> str:
        prompt = body["messages"][-1]["content"]
        summary = re.search(r"<summary>\n(.*?)\n</summary>", prompt, re.S).group(1)
        record = by_summary[summary]
        asked = [c for c in record["scores"] if re.search(rf"(^|- |Criterion: ){c}\b", prompt, re.M)]
        if len(asked) == 1:
            return f"{asked[0]}: {record['scores'][asked[0]]:g}"
        return json.dumps({c: record["scores"][c] for c in asked})

    return respond


# Heavy modules the in-process pytester runs use, imported once here: pytester restores
# sys.modules after each inner run, numpy cannot be imported twice in one process, and
# hypothesis' pytest plugin would re-import (and assert-rewrite) it in every inner run, seconds each.
# scikit-learn and krippendorff (agreement.py) hold compiled parts too: loaded once, like numpy.
for _module in ("hypothesis", "numpy", "scipy.stats", "sklearn.metrics", "krippendorff"):
    importlib.import_module(_module)
import_litellm()


@pytest.fixture(autouse=True)
def not_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """pytest prints failure messages in full in its short summary when CI is set, which changes what
    inner pytester runs print; the tests count messages, so inner runs behave the same everywhere."""
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("BUILD_NUMBER", raising=False)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``posix`` (os.fork, a pty, SIGKILL) are skipped where the OS has none of them (Windows): the
    rest of the suite runs there as anywhere."""
    if os.name == "posix":
        return
    skip = pytest.mark.skip(reason="needs os.fork, a pseudo-terminal or SIGKILL (POSIX only)")
    for item in items:
        if item.get_closest_marker("posix") is not None:
            item.add_marker(skip)
