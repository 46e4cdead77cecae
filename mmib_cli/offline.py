"""Network policy: mmib is offline by default; `--online` or `MMIB_OFFLINE=0` lets it reach the hub.

`configure_network` must run before `transformers`/`huggingface_hub` are first imported, because both read
`HF_HUB_OFFLINE` at import time. Library code asks `is_offline()` at call time instead of trusting those constants.
"""
from __future__ import annotations

import logging
import os
import sys

logger = logging.getLogger(__name__)

ENV_MMIB_OFFLINE = "MMIB_OFFLINE"
ENV_HF_HUB_OFFLINE = "HF_HUB_OFFLINE"

_TRUE = {"1", "on", "yes", "true"}
_FALSE = {"0", "off", "no", "false"}


def _env_flag(name: str) -> bool | None:
    """Read a boolean environment variable: True, False, or None when unset/empty/unrecognised."""
    value = os.environ.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    return None


def network_choice(online: bool | None = None) -> bool | None:
    """What the user asked for, before mmib decides: `--online/--offline`, else `MMIB_OFFLINE`, else
    `HF_HUB_OFFLINE` (True: online, False: offline), or None when nothing was asked (call before
    `configure_network`, which publishes its decision to those variables)."""
    if online is not None:
        return online
    for name in (ENV_MMIB_OFFLINE, ENV_HF_HUB_OFFLINE):
        flag = _env_flag(name)
        if flag is not None:
            return not flag
    return None


def configure_network(online: bool | None = None) -> bool:
    """Decide whether mmib may use the network and publish the decision to the environment.

    Precedence: the `online` argument (`--online`), then `MMIB_OFFLINE` (`0` = online), else offline.
    Sets `MMIB_OFFLINE` and `HF_HUB_OFFLINE` (inherited by subprocesses and read by `huggingface_hub` and
    `transformers` at import) and, if `huggingface_hub` is already imported, `huggingface_hub.constants.HF_HUB_OFFLINE`.

    Args:
        online: True forces online, False forces offline, None follows `MMIB_OFFLINE` (default offline).

    Returns:
        Whether the network may be used.
    """
    if online is None:
        online = _env_flag(ENV_MMIB_OFFLINE) is False
    os.environ[ENV_MMIB_OFFLINE] = "0" if online else "1"
    os.environ[ENV_HF_HUB_OFFLINE] = "0" if online else "1"
    if "huggingface_hub" in sys.modules:
        set_hub_offline_flag(not online)
    logger.debug("network %s", "enabled" if online else "disabled (offline mode)")
    return online


def is_offline() -> bool:
    """Whether mmib must not use the network, read from the environment at call time.

    `MMIB_OFFLINE` wins when set; otherwise `HF_HUB_OFFLINE`; with neither set, mmib is offline.

    Returns:
        True when offline.
    """
    flag = _env_flag(ENV_MMIB_OFFLINE)
    if flag is None:
        flag = _env_flag(ENV_HF_HUB_OFFLINE)
    return True if flag is None else flag


def set_hub_offline_flag(offline: bool) -> bool:
    """Set `huggingface_hub.constants.HF_HUB_OFFLINE` (which it otherwise freezes at import); return the old value.

    Args:
        offline: the new value.

    Returns:
        The previous value.
    """
    from huggingface_hub import constants

    previous = bool(constants.HF_HUB_OFFLINE)
    constants.HF_HUB_OFFLINE = offline
    return previous
