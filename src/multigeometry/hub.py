"""The Hugging Face hub, when it cannot be reached: one clear error naming the model or dataset, at once.

Left alone, `from_pretrained` and `load_dataset` retry an unreachable hub five times with growing waits, printing a
warning each time, before failing with a message that names neither the param nor what to do. `require_hub` is called
before a hub id is loaded: it checks once per process whether the hub answers; if not, it switches the hub libraries
to offline mode (the local cache still serves what it holds, without retries) and says so once.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from urllib.parse import urlparse

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 3.0


class HubUnavailable(OSError):
    """A hub model or dataset that is neither local nor cached, with no hub to fetch it from."""


def _offline_by_env() -> bool:
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))


@functools.cache
def hub_reachable() -> bool:
    """Whether the hub's endpoint accepts a TCP connection (once per process; False when offline mode is set)."""
    if _offline_by_env():
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=CONNECT_TIMEOUT_S).close()
        return True
    except OSError as e:
        log.warning("the Hugging Face hub (%s) cannot be reached (%s): hub ids load from the local cache only",
                    url.hostname, e)
        _go_offline()
        return False


def _go_offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
    import huggingface_hub.constants

    huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        import datasets.config

        datasets.config.HF_HUB_OFFLINE = True
    except ImportError:  # pragma: no cover - datasets is a dependency
        pass


def require_model(name: str, where: str) -> None:
    """Before `from_pretrained(name)` of a hub id: with no hub, `name` must be in the local cache, else a
    HubUnavailable that names `where` (the param) and `name`."""
    if hub_reachable():
        return
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(name, local_files_only=True)
    except Exception as e:
        raise HubUnavailable(
            f"{where}={name!r}: not a catalogue name or a local path, not in the Hugging Face cache, and the hub "
            "cannot be reached (or HF_HUB_OFFLINE is set). Download it once where the hub is reachable, or give a "
            "local folder or a catalogue name"
        ) from e


def dataset_unavailable(name: str, error: Exception) -> HubUnavailable | None:
    """The error to raise instead of `error` when loading the hub dataset `name` failed for want of a hub."""
    if hub_reachable():
        return None
    return HubUnavailable(
        f"data.source hf:{name}: not a local folder, not in the datasets cache, and the hub cannot be reached (or "
        f"HF_DATASETS_OFFLINE is set): {type(error).__name__}: {error}"
    )
