"""The shared cache, against a real ``redis-server`` (started on a free 127.0.0.1 port, persistence off).

Two checkouts share answers through it; its keys carry the prefix (and the TTL) and nothing of the
endpoint or the key; a server killed mid-run, one that is not there and one that is full are each
reported once while the run goes on with the local cache, and fail the items when the shared cache
is required. The tests skip only when the ``redis-server`` binary is absent.
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from typing import Any

import pytest

from pytest_judgeopt.cache import Cache
from pytest_judgeopt.redis_cache import shown_url
from tests.conftest import FEW_DOCUMENTS, RedisServer, human_from_prompt, make_records, server_model, spec_text
from tests.fake_llm import FakeLLMServer

RECORDS = make_records()
ANSWERS = 8 * 2 + 8  # the test split's 8 samples: two criteria separately, and the merged prompt


def checkout(folder: Path, server: FakeLLMServer) -> Path:
    """A project folder of its own (its own rootdir, so its own local cache under .judgeopt/)."""
    folder.mkdir(parents=True)
    (folder / "pytest.ini").write_text("[pytest]\n")
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    (folder / "toy.judge.yaml").write_text(spec_text(server_model(server), min_rho=0.9, extra=FEW_DOCUMENTS))
    return folder


def run(pytester: pytest.Pytester, folder: Path, *args: str) -> pytest.RunResult:
    return pytester.runpytest("--rootdir", str(folder), "-c", str(folder / "pytest.ini"), "-rA", str(folder), *args)


def local_answers(folder: Path) -> int:
    cache = Cache(folder / ".judgeopt")
    try:
        return len(cache)
    finally:
        cache.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_checkouts_sharing_one_redis_the_second_makes_no_model_call(
        pytester: pytest.Pytester, fake_llm: FakeLLMServer, redis_server: Any) -> None:
    fake_llm.responder = human_from_prompt(RECORDS)
    redis = redis_server()
    first, second = checkout(pytester.path / "alice", fake_llm), checkout(pytester.path / "ci-runner", fake_llm)

    run(pytester, first, f"--judge-cache-url={redis.url}").assert_outcomes(passed=3)
    assert len(fake_llm.chat_requests()) == ANSWERS
    fake_llm.reset()

    result = run(pytester, second, f"--judge-cache-url={redis.url}")
    result.assert_outcomes(passed=3)
    assert fake_llm.chat_requests() == []
    assert f"model calls: 0 made, {ANSWERS} from cache" in result.stdout.str()
    assert local_answers(second) == ANSWERS  # copied into the second checkout's own cache: it has them offline now


def test_a_tls_redis_named_by_the_environment_is_shared_and_its_certificate_is_checked(
        pytester: pytest.Pytester, fake_llm: FakeLLMServer, redis_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """rediss:// through JUDGEOPT_CACHE_URL (a CI job's secret): the second checkout makes no call; a server whose
    certificate the client cannot check is not used (reported once, the run goes on with the local cache)."""
    fake_llm.responder = human_from_prompt(RECORDS)
    redis = redis_server(tls=True)
    first, second, third = (checkout(pytester.path / name, fake_llm) for name in ("alice", "ci-runner", "untrusting"))
    monkeypatch.setenv("JUDGEOPT_CACHE_URL", redis.url)
    run(pytester, first).assert_outcomes(passed=3)
    assert len(fake_llm.chat_requests()) == ANSWERS
    assert len(redis.client().keys("judgeopt:*")) == ANSWERS  # stored over TLS
    fake_llm.reset()

    result = run(pytester, second)
    result.assert_outcomes(passed=3)
    assert fake_llm.chat_requests() == []
    assert f"model calls: 0 made, {ANSWERS} from cache" in result.stdout.str()

    untrusted = redis.url.split("?")[0]  # the system's CAs only: the self-signed certificate is refused
    monkeypatch.setenv("JUDGEOPT_CACHE_URL", untrusted)
    result = run(pytester, third)
    result.assert_outcomes(passed=3)
    out = result.stdout.str()
    assert out.count(f"the shared cache {untrusted} cannot be reached") == 1, out
    assert "certificate verify failed" in out, out
    assert len(fake_llm.chat_requests()) == ANSWERS  # asked the model, as with no shared cache


def test_keys_carry_the_prefix_and_the_ttl_and_nothing_of_the_endpoint_or_key(
        pytester: pytest.Pytester, fake_llm: FakeLLMServer, redis_server: Any) -> None:
    fake_llm.responder = human_from_prompt(RECORDS)
    redis = redis_server()
    client = redis.client()
    client.set("someone-else:key", "left alone")
    folder = checkout(pytester.path / "project", fake_llm)

    run(pytester, folder, f"--judge-cache-url={redis.url}", "--judge-cache-prefix=team-a:",
        "--judge-cache-ttl=1h").assert_outcomes(passed=3)

    keys = sorted(k.decode() for k in client.scan_iter(match="*"))
    ours = [k for k in keys if k != "someone-else:key"]
    assert len(ours) == ANSWERS and all(re.fullmatch(r"team-a:[0-9a-f]{64}", k) for k in ours), keys
    assert client.get("someone-else:key") == b"left alone"
    assert all(0 < client.ttl(k) <= 3600 for k in ours) and client.ttl("someone-else:key") == -1
    values = b"".join(client.get(k) for k in ours)
    assert b"127.0.0.1" not in values and b"sk-test-not-a-real-key" not in values
    assert {json.loads(client.get(k))["choices"][0]["text"] for k in ours} <= {
        f"{c}: {s:g}" for r in RECORDS for c, s in r["scores"].items()} | {
        json.dumps({c: r["scores"][c] for c in ("coherence", "fluency")}) for r in RECORDS}


def test_redis_killed_mid_run_is_reported_once_and_the_run_goes_on(
        pytester: pytest.Pytester, fake_llm: FakeLLMServer, redis_server: Any) -> None:
    redis: RedisServer = redis_server()
    answer = human_from_prompt(RECORDS)
    seen = []

    def kill_on_the_fifth_call(body: dict[str, Any]) -> str:
        seen.append(1)
        if len(seen) == 5:
            redis.kill()  # SIGKILL while the run is reading and writing it
        return answer(body)

    fake_llm.responder = kill_on_the_fifth_call
    folder = checkout(pytester.path / "project", fake_llm)

    result = run(pytester, folder, f"--judge-cache-url={redis.url}")
    out = result.stdout.str()
    result.assert_outcomes(passed=3)
    assert out.count(f"the shared cache {redis.url} cannot be reached") == 1, out
    assert "this run goes on with the local cache only. Fix: check the Redis server" in out
    assert len(fake_llm.chat_requests()) == ANSWERS  # every answer was made once, none lost
    assert local_answers(folder) == ANSWERS
    assert "Traceback" not in out


def test_an_unreachable_redis_is_reported_once_or_fails_the_items_when_required(
        pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    fake_llm.responder = human_from_prompt(RECORDS)
    url = f"redis://127.0.0.1:{closed_port()}/0"
    folder = checkout(pytester.path / "project", fake_llm)

    required = run(pytester, folder, f"--judge-cache-url={url}", "--judge-cache-required")
    out = required.stdout.str()
    required.assert_outcomes(failed=3)
    assert fake_llm.chat_requests() == []  # nothing paid for without the cache that was required
    assert (f"the shared cache {url} cannot be reached (Error 111 connecting to 127.0.0.1:") in out, out
    assert "and it is required (--judge-cache-required). Fix: check the Redis server and --judge-cache-url" in out
    assert "Traceback" not in out

    result = run(pytester, folder, f"--judge-cache-url={url}")
    result.assert_outcomes(passed=3)
    assert result.stdout.str().count(f"the shared cache {url} cannot be reached") == 1


def test_a_full_redis_refusing_writes_is_reported_once_and_answers_stay_local(
        pytester: pytest.Pytester, fake_llm: FakeLLMServer, redis_server: Any) -> None:
    import redis as redis_client

    fake_llm.responder = human_from_prompt(RECORDS)
    redis = redis_server("--maxmemory", "1mb", "--maxmemory-policy", "noeviction")
    client = redis.client()
    with pytest.raises(redis_client.exceptions.OutOfMemoryError):
        for i in range(10_000):  # fill it: from here on every write is refused
            client.set(f"filler:{i}", "x" * 10_000)
    folder = checkout(pytester.path / "project", fake_llm)

    result = run(pytester, folder, f"--judge-cache-url={redis.url}")
    out = result.stdout.str()
    result.assert_outcomes(passed=3)
    assert out.count(f"the shared cache {redis.url} refused to store answers (command not allowed when used memory > "
                     "'maxmemory'.)") == 1, out
    assert "this run reads it but stores new answers in the local cache only" in out
    assert list(client.scan_iter(match="judgeopt:*")) == []
    assert local_answers(folder) == ANSWERS

    fake_llm.reset()
    other = checkout(pytester.path / "required", fake_llm)
    required = run(pytester, other, f"--judge-cache-url={redis.url}", "--judge-cache-required")
    out = required.stdout.str()
    # the first item's answers could not be stored where they were required to go: it fails (the items after it
    # find those answers in the local cache and need the shared one no more)
    assert required.ret != 0 and "FAILED required/toy.judge.yaml::coherence" in out, out
    assert "refused to store answers (command not allowed when used memory" in out and "it is required" in out, out
    assert "Traceback" not in out


def test_a_missing_redis_client_or_a_wrong_url_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("""
        import sys

        class HideRedis:
            def find_spec(self, name, path=None, target=None):
                if name == "redis" or name.startswith("redis."):
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)

        sys.meta_path.insert(0, HideRedis())
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--judge-cache-url=redis://127.0.0.1:1/0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert ("ERROR: --judge-cache-url: the shared cache needs the redis client: pip install "
            "'pytest-judgeopt[redis]'") in result.stderr.str()

    (pytester.path / "conftest.py").unlink()
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--judge-cache-url=http://cache:6379")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "ERROR: --judge-cache-url: http://cache:6379 is not a Redis URL: use redis://host:port/db" in result.stderr.str()

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--judge-cache-ttl=soon")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert ("--judge-cache-ttl soon: expected seconds or a number with s, m, h or d, got 'soon'. Fix: write e.g. "
            "--judge-cache-ttl 7d") in result.stderr.str()


def test_a_url_is_shown_without_its_password() -> None:
    assert shown_url("rediss://:s3cret@cache.internal:6380/0") == "rediss://:***@cache.internal:6380/0"
    assert shown_url("redis://ci:s3cret@cache/1") == "redis://ci:***@cache/1"
    assert shown_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
