"""Adapters on the Hugging Face Hub: download by repository id, upload a saved adapter.

``huggingface_hub`` (a dependency of transformers) does the work: downloads go through its cache
(``$HF_HUB_CACHE``), so with ``HF_HUB_OFFLINE=1`` an adapter downloaded once loads without a
network; uploads create the repository if needed and commit one folder.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from prefixtune.io.card import CARD_NAME
from prefixtune.io.checkpoint import ADAPTER_NAME, CONFIG_NAME, TRAINABLE_NAME
from prefixtune.io.files import CheckpointError
from prefixtune.io.module_state import STATE_FILE
from prefixtune.io.peft import PEFT_CONFIG, PEFT_WEIGHTS

#: the files any adapter directory we read may hold (ours, PEFT's, Trainer's module state, the card)
ADAPTER_FILES = [CONFIG_NAME, ADAPTER_NAME, TRAINABLE_NAME, PEFT_CONFIG, PEFT_WEIGHTS, STATE_FILE, CARD_NAME]


def local_or_download(path_or_id: str | os.PathLike, revision: str | None = None, token: str | bool | None = None,
                      subfolder: str | None = None) -> Path:
    """``path_or_id`` if it is a local directory, else the local snapshot of that hub repository.

    Raises:
        CheckpointError: neither a directory nor a repository that can be reached (offline, no
            such repository, no access); the message says which and what to do.
    """
    path = Path(path_or_id)
    if path.is_dir() or str(path_or_id).startswith((".", "/", "~")) or str(path_or_id).count("/") != 1:
        return path / subfolder if subfolder else path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

    patterns = [f"{subfolder}/{f}" if subfolder else f for f in ADAPTER_FILES]
    try:
        where = Path(snapshot_download(str(path_or_id), revision=revision, token=token, allow_patterns=patterns))
    except LocalEntryNotFoundError:
        raise CheckpointError(f"{path_or_id}: no such local directory, and the hub cannot be reached "
                              f"(offline{' mode: HF_HUB_OFFLINE is set' if _offline() else ''}) with no cached copy; "
                              "download it once online, or pass a local directory") from None
    except (RepositoryNotFoundError, HFValidationError) as e:
        raise CheckpointError(f"{path_or_id}: no such local directory or hub repository "
                              f"({type(e).__name__}; private repositories need token=...)") from None
    except OSError as e:  # connection errors and the like
        raise CheckpointError(f"{path_or_id}: downloading from the hub failed ({e})") from None
    return where / subfolder if subfolder else where


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def push_folder(save: Callable[[Path], None], repo_id: str, private: bool | None = None,
                token: str | bool | None = None, commit_message: str = "Upload prefixtune adapter",
                revision: str | None = None) -> Any:
    """``save(folder)`` into a fresh temporary folder, then upload it as one commit to ``repo_id``
    (created if missing). Returns ``huggingface_hub``'s ``CommitInfo``."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="prefixtune-push-") as tmp:
        save(Path(tmp))
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        return api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message, revision=revision,
                                 repo_type="model")
