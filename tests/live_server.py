"""Live servers for the serving tests: tiny random Llamas with SmolLM2's tokenizer on 127.0.0.1."""

from __future__ import annotations

import socket
from typing import Any

import httpx
import torch
import transformers as T

from prefixtune.runtime.bank import AdapterBank
from prefixtune.serve.app import ServerSettings, create_app
from prefixtune.serve.continuous import make_engine
from prefixtune.serve.engine import EngineSettings
from prefixtune.serve.thread import ServerThread

KEY, ADMIN = "test-key", "admin-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def tiny_llama(tokenizer: Any, seed: int = 0) -> T.LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = T.LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=64, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return T.LlamaForCausalLM(cfg).eval()


class LiveServer(ServerThread):
    def client(self, key: str = KEY) -> Any:
        import openai

        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=60)

    def http(self, key: str | None = KEY, timeout: float = 60) -> httpx.Client:
        """An httpx client on the server, sending ``key`` as the bearer token (None: no header)."""
        headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def raw(self, request: bytes, timeout: float = 10, until_closed: bool = False) -> bytes:
        """Send ``request`` as it is on a fresh socket; what comes back until the server closes or
        (unless ``until_closed``) one response's headers and body (by Content-Length) have arrived."""
        with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
            sock.sendall(request)
            data = b""
            while True:
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                data += chunk
                head, sep, body = data.partition(b"\r\n\r\n")
                if sep and b"content-length:" in head.lower() and not until_closed:
                    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                    if len(body) >= length:
                        break
            return data


def make_server(tokenizer: Any, adapters: dict[str, Any], settings: dict[str, Any] | None = None,
                tokenizer_for_engine: Any = None, **engine: Any) -> tuple[LiveServer, Any]:
    """A server with ``adapters`` loaded (name -> directory), keys :data:`KEY` and :data:`ADMIN`,
    64 prompt tokens and 32 new tokens at most (``settings`` overrides), ``engine`` settings."""
    bank = AdapterBank(tiny_llama(tokenizer))
    for name, path in adapters.items():
        bank.add(name, path)
    eng = make_engine(bank, tokenizer_for_engine or tokenizer, EngineSettings(**engine))
    options = dict(base_name="tiny", api_key=KEY, admin_key=ADMIN, max_prompt_tokens=64, max_tokens=32)
    app = create_app(eng, ServerSettings(**{**options, **(settings or {})}))
    return LiveServer(app), eng


def model_call(engine: Any) -> tuple[Any, str]:
    """``(object, attribute)`` of the call through which ``engine`` runs the model: the continuous
    engine's per-step forward, or the micro-batching engine's ``bank.generate`` (to hold or break it)."""
    return (engine.model, "forward") if hasattr(engine, "running") else (engine.bank, "generate")


def hold(engine: Any, release: Any) -> None:
    """Every model call of ``engine`` waits for the event ``release`` first (at most 30 s)."""
    obj, name = model_call(engine)
    real = getattr(obj, name)

    def held(*args: Any, **kwargs: Any) -> Any:
        release.wait(30)
        return real(*args, **kwargs)

    setattr(obj, name, held)
