"""The gateway's settings: a ``[gateway]`` config section plus command-line flags.

Until :mod:`spear.config` has a ``[gateway]`` section, :func:`from_config`
reads it when present and otherwise uses these defaults; flags override
both. The SMS address and security come from ``[global]`` and
``[security]`` like every other client.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta, Struct

from .. import config as _config_module, protocol as P
from ..errors import ConfigError

DEFAULT_HTTP = "127.0.0.1:7780"


class _GatewayConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ``[gateway]`` section (proposed for :class:`spear.config.Config`)."""

    #: HOST:PORT to serve HTTP on
    listen: Annotated[str, Meta(min_length=1, max_length=512)] = DEFAULT_HTTP
    #: SMS address; empty: ``[global] sms``
    sms: str = ""
    #: largest request body (deploy uploads, invocation input), bytes
    max_body: Annotated[int, Meta(ge=1024, le=P.MAX_PAYLOAD)] = P.MAX_PAYLOAD
    #: how long a synchronous invocation may wait for its result, seconds
    invoke_timeout: Annotated[float, Meta(gt=0, le=86400)] = 300.0
    #: live figures: seconds between samples, and how many seconds are kept
    sample_interval: Annotated[float, Meta(ge=0.1, le=3600)] = 2.0
    history: Annotated[float, Meta(ge=10, le=86400)] = 900.0
    #: executions whose streamed logs are kept in memory
    log_executions: Annotated[int, Meta(ge=0, le=1_000_000)] = 1000
    #: write an access log line per request
    access_log: bool = False


#: once spear.config defines the section, that one definition is used
GatewayConfig = getattr(_config_module, "GatewayConfig", None) or _GatewayConfig


class Settings(Struct, frozen=True, kw_only=True):
    """Everything the running gateway needs, resolved."""

    sms: str
    host: str = "127.0.0.1"
    port: int = 7780
    timeout: float = 10.0
    gateway: GatewayConfig = GatewayConfig()
    #: the ``[security]`` section (CURVE keys for the SMS link, bearer tokens)
    security: object = None

    @property
    def tokens(self) -> dict[str, str]:
        return dict(getattr(self.security, "tokens", None) or {})


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``:PORT``, ``[::1]:PORT``) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]") or "127.0.0.1"
    try:
        n = int(port)
    except ValueError:
        raise ConfigError(f"[gateway] listen = {text!r}: expected HOST:PORT") from None
    if not 0 <= n <= 65535:
        raise ConfigError(f"[gateway] listen = {text!r}: port out of range")
    return host, n


def from_config(cfg, *, sms: str | None = None, http: str | None = None,
                overrides: dict | None = None) -> Settings:
    """Resolve the gateway's settings from a :class:`spear.config.Config` and flags."""
    section = getattr(cfg, "gateway", None)
    raw = msgspec.to_builtins(section) if section is not None else {}
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    if http:
        raw["listen"] = http
    if sms:
        raw["sms"] = sms
    try:
        gw = msgspec.convert(raw, GatewayConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"[gateway] {exc}") from None
    host, port = parse_listen(gw.listen)
    return Settings(sms=gw.sms or cfg.global_.sms, host=host, port=port,
                    timeout=cfg.global_.timeout, gateway=gw, security=cfg.security)
