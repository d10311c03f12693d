"""OpenAIEmbedder over real HTTP against the fake OpenAI server: packing, truncation, retries,
concurrency, dimensions, and errors that never leak the API key."""

from __future__ import annotations

import time
import traceback
from collections.abc import Iterator, Sequence

import numpy as np
import openai
import pytest

from dagster_project.core.embed.base import EmbeddingError, normalize
from dagster_project.core.embed.openai_embedder import OpenAIEmbedder
from dagster_project.core.ingest.tokens import EstimateCounter
from tests.fakes.openai_server import FakeOpenAI

KEY = "sk-test-SECRET123"


class WordCounter:
    """Same count as the fake server's usage, so token assertions are exact."""

    name = "words"

    def count(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) for t in texts]


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


def make(fake: FakeOpenAI, **kwargs) -> OpenAIEmbedder:
    kwargs.setdefault("token_counter", WordCounter())
    return OpenAIEmbedder(api_key=KEY, base_url=fake.base_url, **kwargs)


def expected(texts: list[str], dims: int = 1536) -> np.ndarray:
    return normalize(np.stack([FakeOpenAI.vector(t, dims) for t in texts]))


def test_batches_by_input_count_and_keeps_order(fake: FakeOpenAI) -> None:
    texts = [f"text number {i}" for i in range(7)]
    batch = make(fake, batch_size=3).embed(texts)
    assert sorted(len(i) for i in fake.embedding_inputs) == [1, 3, 3]  # arrival order varies
    assert fake.max_inputs == 3
    single = make(fake).embed(texts)
    assert fake.request_count == 4
    assert batch.vectors.dtype == np.float32 and batch.vectors.shape == (7, 1536)
    np.testing.assert_array_equal(batch.vectors, single.vectors)
    np.testing.assert_allclose(batch.vectors, expected(texts), rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(batch.vectors, axis=1), 1.0, rtol=1e-5)
    assert batch.tokens == single.tokens == 21  # from usage.total_tokens
    assert batch.warnings == []


def test_batch_size_is_clamped_to_the_api_limit(fake: FakeOpenAI) -> None:
    assert make(fake, batch_size=10_000).batch_size == 2048


def test_batches_by_token_budget(fake: FakeOpenAI) -> None:
    texts = [f"four words here {i}" for i in range(5)]
    batch = make(fake, max_request_tokens=10).embed(texts)
    assert sorted(len(i) for i in fake.embedding_inputs) == [1, 2, 2]
    np.testing.assert_allclose(batch.vectors, expected(texts), rtol=1e-6)
    assert batch.tokens == 20


def test_overlong_input_is_truncated_with_one_warning(fake: FakeOpenAI) -> None:
    counter = EstimateCounter()  # what tiktoken_counter() falls back to here
    long_text = " ".join(f"w{i}" for i in range(500))
    texts = ["short one", long_text, long_text + " again"]
    batch = make(fake, max_input_tokens=50, token_counter=counter).embed(texts)
    sent = fake.embedding_inputs[0]
    assert sent[0] == "short one"
    assert all(n <= 50 for n in counter.count(sent))
    assert long_text.startswith(sent[1]) and len(sent[1]) < len(long_text)
    assert batch.vectors.shape == (3, 1536)
    assert len(batch.warnings) == 1
    assert "2 text(s)" in batch.warnings[0] and "CHUNK_MAX_TOKENS" in batch.warnings[0]


def test_429_honours_retry_after(fake: FakeOpenAI) -> None:
    fake.fail_next(429, headers={"Retry-After": "1"})
    start = time.monotonic()
    batch = make(fake, max_retries=2).embed(["a", "b"])
    assert time.monotonic() - start >= 0.95
    assert fake.request_count == 2
    np.testing.assert_allclose(batch.vectors, expected(["a", "b"]), rtol=1e-6)


def test_500_twice_then_success(fake: FakeOpenAI) -> None:
    fake.fail_next(500, times=2)
    batch = make(fake, max_retries=3).embed(["a"])
    assert fake.request_count == 3
    assert batch.vectors.shape == (1, 1536)


def test_persistent_500_raises_after_retries(fake: FakeOpenAI) -> None:
    fake.fail_next(500, times=10)
    with pytest.raises(EmbeddingError, match=r"answered 500.*after 1 retries.*try again later"):
        make(fake, max_retries=1).embed(["a"])
    assert fake.request_count == 2


def test_401_names_the_fix_and_never_the_key(fake: FakeOpenAI) -> None:
    # A server that echoes the key back must not get it into our error.
    fake.fail_next(401, body={"error": {"message": f"Incorrect API key provided: {KEY}", "type": "auth"}})
    with pytest.raises(EmbeddingError) as info:
        make(fake).embed(["a"])
    err = info.value
    assert fake.request_count == 1  # 401 is not retried
    assert "answered 401" in str(err) and "check OPENAI_API_KEY" in str(err)
    assert "127.0.0.1" in str(err)
    texts = [str(err), repr(err), "".join(traceback.format_exception(err))]
    texts += [str(e) + repr(e) for e in (err.__cause__, err.__context__) if e is not None]
    assert all(KEY not in t and "SECRET123" not in t for t in texts)


def test_missing_key_without_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(EmbeddingError, match=r"set OPENAI_API_KEY \(or OPENAI_BASE_URL for a local server\)"):
        OpenAIEmbedder()


def test_local_server_needs_no_key(fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    OpenAIEmbedder(base_url=fake.base_url).embed(["a"])
    assert fake.request_count == 1


def test_unreachable_server_names_base_url() -> None:
    with FakeOpenAI() as gone:
        base_url = gone.base_url
    with pytest.raises(EmbeddingError, match="could not reach.*OPENAI_BASE_URL"):
        OpenAIEmbedder(api_key=KEY, base_url=base_url, max_retries=0).embed(["a"])


def test_requests_run_concurrently(fake: FakeOpenAI) -> None:
    fake.delay = 0.3
    start = time.monotonic()
    batch = make(fake, batch_size=1, concurrency=4).embed(["a", "b", "c", "d"])
    elapsed = time.monotonic() - start
    assert fake.request_count == 4
    assert elapsed < 0.9, f"4 requests at concurrency 4 took {elapsed:.2f}s"
    np.testing.assert_allclose(batch.vectors, expected(["a", "b", "c", "d"]), rtol=1e-6)


def test_dims_are_sent_as_dimensions(fake: FakeOpenAI) -> None:
    embedder = make(fake, dims=256)
    assert embedder.model.key == "openai:text-embedding-3-small:256"
    batch = embedder.embed(["a", "b"])
    assert fake.requests[0]["body"]["dimensions"] == 256
    assert batch.vectors.shape == (2, 256)
    np.testing.assert_allclose(batch.vectors, expected(["a", "b"], 256), rtol=1e-6)


def test_dimensions_not_sent_unless_given(fake: FakeOpenAI) -> None:
    make(fake).embed(["a"])
    assert "dimensions" not in fake.requests[0]["body"]


def test_unknown_model_learns_dims_from_first_response(fake: FakeOpenAI) -> None:
    fake.dims = 64
    embedder = make(fake, model="nomic-embed-text")
    assert embedder.embed(["a", "b"]).vectors.shape == (2, 64)
    assert embedder.model.dims == 64 and fake.request_count == 1
    probed = make(fake, model="nomic-embed-text")
    assert probed.model.key == "openai:nomic-embed-text:64"
    assert fake.request_count == 2  # one probe


def test_wrong_vector_count_raises(fake: FakeOpenAI) -> None:
    one = {"object": "embedding", "index": 0, "embedding": [0.1] * 1536}
    usage = {"prompt_tokens": 1, "total_tokens": 1}
    fake.fail_next(200, body={"object": "list", "data": [one], "model": "m", "usage": usage})
    with pytest.raises(EmbeddingError, match="returned 1 vectors for 2 inputs"):
        make(fake).embed(["a", "b"])


def test_wrong_dims_raise(fake: FakeOpenAI) -> None:
    fake.dims = 768
    with pytest.raises(EmbeddingError, match=r"\[768\] dimensions, expected 1536"):
        make(fake).embed(["a"])


def test_empty_input_sends_nothing(fake: FakeOpenAI) -> None:
    batch = make(fake).embed([])
    assert batch.vectors.shape == (0, 1536) and batch.tokens == 0
    assert fake.request_count == 0


def test_fake_chat_completions_replies_in_order(fake: FakeOpenAI) -> None:
    fake.reply('{"title": "x"}')
    client = openai.OpenAI(api_key=KEY, base_url=fake.base_url, max_retries=0)
    messages = [{"role": "user", "content": "name this"}]
    first = client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    second = client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert first.choices[0].message.content == '{"title": "x"}'
    assert second.choices[0].message.content == "{}"
    assert first.usage is not None and first.usage.prompt_tokens == 2
    assert fake.requests[0]["headers"]["authorization"] == f"Bearer {KEY}"
