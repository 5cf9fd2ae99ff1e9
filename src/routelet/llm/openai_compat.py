"""A teacher on any OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp, a hosted API).

    teacher = make_teacher(taxonomy, config, cache, provider="openai", base_url="http://127.0.0.1:8000/v1")

The model must answer with a bare JSON object {"route": ..., "reason": ...} (the strict contract
of the prompt's json style; a ```json fence is tolerated). Anything else is a `review` result,
counted by the baseline as malformed, never a crash. Plain httpx, no SDK: the endpoint may be a
local router LLM such as Arch-Router. The key, if the endpoint wants one, comes from `api_key`
or $OPENAI_API_KEY. An image teacher (modality="image") sends the screenshot as an `image_url`
part holding a data: URL, for a vision model behind the endpoint.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx

from routelet.data.taxonomy import Taxonomy
from routelet.llm.cache import AnswerCache
from routelet.llm.config import TeacherConfig
from routelet.llm.image import ImageRequest
from routelet.llm.prompt import IMAGE_NOTE
from routelet.llm.retry import CallFailed, status_failure
from routelet.llm.teacher import Answer, Teacher


class OpenAITeacher(Teacher):
    labeler = "openai-compatible"
    style = "json"

    def __init__(self, taxonomy: Taxonomy, config: TeacherConfig, cache: AnswerCache | str | Path | None = None,
                 base_url: str = "", api_key: str | None = None, modality: str = "text") -> None:
        super().__init__(taxonomy, config, cache, modality)
        api_key = api_key or os.environ.get("OPENAI_API_KEY")
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self.client = httpx.Client(base_url=self.base_url, headers=headers, timeout=config.timeout_s)

    @property
    def cache_model(self) -> str:
        return f"openai:{self.config.model}"

    def _ask(self, text: str | ImageRequest, timeout: float) -> Answer:
        user = self.prompt.user(text) if isinstance(text, str) else [
            {"type": "image_url", "image_url": {"url": text.data_url()}}, {"type": "text", "text": IMAGE_NOTE}]
        body = {
            "model": self.config.model,
            "temperature": 0,
            "max_tokens": self.config.max_tokens,
            "messages": [{"role": "system", "content": self.prompt.system},
                         {"role": "user", "content": user}],
        }
        start = time.monotonic()
        try:
            response = self.client.post("/chat/completions", json=body, timeout=timeout)
        except httpx.TimeoutException:
            raise CallFailed("timeout", f"no answer from {self.base_url} before the timeout") from None
        except httpx.TransportError as error:
            raise CallFailed("connection", f"{self.base_url}: {type(error).__name__}: {error}") from None
        latency_ms = (time.monotonic() - start) * 1000
        if response.status_code >= 400:
            raise status_failure(response.status_code, response.text[:300], response.headers)
        try:
            data = response.json()
        except ValueError:
            raise CallFailed("broken", f"{self.base_url}: response body is not JSON: {response.text[:100]!r}") from None
        return _answer(data, self.config.model, latency_ms)


def _answer(data, model: str, latency_ms: float) -> Answer:
    usage = data.get("usage") if isinstance(data, dict) else None
    usage = usage if isinstance(usage, dict) else {}
    tokens = {"input_tokens": int(usage.get("prompt_tokens") or 0),
              "output_tokens": int(usage.get("completion_tokens") or 0)}
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return Answer(None, str(data)[:2000], tokens, model, latency_ms, "malformed: no choices[0].message.content")
    if not isinstance(content, str):
        return Answer(None, str(content)[:2000], tokens, model, latency_ms, "malformed: message content is not text")
    return Answer(content, content[:2000], tokens, data.get("model") or model, latency_ms)
