"""``prefixtune serve``: load the model and adapters, then run uvicorn."""

from __future__ import annotations

from typing import Any

from prefixtune.extras import require


def serve_from_args(args: Any) -> None:
    try:
        uvicorn = require("uvicorn", "serve", "server")
    except ImportError:  # pragma: no cover
        raise ValueError("serving needs the serve extra: pip install 'prefixtune[serve]'") from None
    from prefixtune.runtime.bank import AdapterBank
    from prefixtune.bundled.models import load_model
    from prefixtune.serve.app import ServerSettings, create_app
    from prefixtune.serve.engine import BatchingEngine, EngineSettings

    adapters = []
    for spec in args.adapter:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--adapter expects NAME=DIR, got {spec!r}")
        adapters.append((name, path))
    model, tokenizer = load_model(args.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    bank = AdapterBank(model)
    for name, path in adapters:
        bank.add(name, path)
        print(f"loaded adapter {name!r} from {path}")
    engine = BatchingEngine(bank, tokenizer, EngineSettings(policy=args.batching, max_batch_size=args.max_batch_size,
                                                            batch_wait_ms=args.batch_wait_ms, max_queue=args.max_queue))
    app = create_app(engine, ServerSettings(base_name=args.model, api_key=args.api_key, admin_key=args.admin_key,
                                            max_prompt_tokens=args.max_prompt_tokens, max_tokens=args.max_tokens))
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", timeout_graceful_shutdown=60)
