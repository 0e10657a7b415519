"""``prefixtune serve``: load the model and adapters, then run uvicorn until SIGTERM."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from prefixtune.extras import require

log = logging.getLogger(__name__)


def served_model_name(model: str) -> str:
    """The id ``/v1/models`` gives the base model loaded from ``model`` when ``--served-model-name``
    is not given: a local directory's last component (never the server's filesystem path), a
    bundled name or hub id (``org/name``) as it is."""
    path = Path(os.path.expanduser(model))
    if path.is_absolute() or path.exists() or model.startswith((".", "~")):
        return path.resolve().name or "base"
    return model


def base_dtype(choice: str) -> Any:
    """The torch dtype of ``--dtype``: ``float32``, ``bfloat16``, or ``auto``, bfloat16 where it is
    faster than float32 on the CPU, where ``load_model`` puts the model
    (:func:`~prefixtune.runtime.hardware.bf16_is_faster`). An explicit bfloat16 where bf16 is
    emulated is kept, with a warning."""
    import torch

    from prefixtune.runtime import hardware

    if choice == "auto":
        choice = "bfloat16" if hardware.bf16_is_faster("cpu") else "float32"
        log.info(f"--dtype auto: {choice} ({hardware.bf16_words('cpu')})")
    elif choice == "bfloat16" and hardware.bf16_is_slower("cpu"):
        log.warning(f"--dtype bfloat16: {hardware.bf16_words('cpu')}, so bf16 is emulated and slow here; "
                    "--dtype auto takes it only where it is faster")
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[choice]


def serve_from_args(args: Any) -> None:
    try:
        uvicorn = require("uvicorn", "serve", "server")
    except ImportError:  # pragma: no cover
        raise ValueError("serving needs the serve extra: pip install 'prefixtune[serve]'") from None
    from prefixtune.runtime.bank import AdapterBank
    from prefixtune.bundled.models import load_model
    from prefixtune.serve.app import ServerSettings, create_app
    from prefixtune.serve.continuous import make_engine
    from prefixtune.serve.engine import EngineSettings
    from prefixtune.serve.thread import DrainingServer

    adapters = []
    for spec in args.adapter:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--adapter expects NAME=DIR, got {spec!r}")
        adapters.append((name, path))
    engine_settings = EngineSettings(policy=args.batching, max_batch_size=args.max_batch_size,
                                     batch_wait_ms=args.batch_wait_ms, max_queue=args.max_queue,
                                     max_batch_tokens=args.max_batch_tokens, compile=args.compile)
    settings = ServerSettings(base_name=args.served_model_name or served_model_name(args.model),
                              api_key=args.api_key, admin_key=args.admin_key, max_prompt_tokens=args.max_prompt_tokens,
                              max_tokens=args.max_tokens, max_body_bytes=args.max_body_bytes)
    model, tokenizer = load_model(args.model, dtype=base_dtype(args.dtype))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    bank = AdapterBank(model)
    for name, path in adapters:
        bank.add(name, path)
        print(f"loaded adapter {name!r} from {path}")
    app = create_app(make_engine(bank, tokenizer, engine_settings), settings)
    DrainingServer(uvicorn.Config(app, host=args.host, port=args.port, log_level="info",
                                  timeout_graceful_shutdown=60)).run()
