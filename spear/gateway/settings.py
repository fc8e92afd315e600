"""The gateway's settings: the ``[gateway]`` config section with command-line flags over it.

:class:`Settings` is everything a running gateway needs, resolved by
:func:`from_config` from a :class:`spear.config.Config` (the section
:class:`spear.config.GatewayConfig`, the SMS address and ``[security]`` that
every client takes from the config) and the flags of ``spear gateway``.
"""

from __future__ import annotations

import ipaddress

import msgspec
from msgspec import Struct

from .. import errors
from ..config import GatewayConfig


class Settings(Struct, frozen=True, kw_only=True):
    """Everything the running gateway needs, resolved."""

    sms: str
    host: str = "127.0.0.1"
    port: int = 7780
    timeout: float = 10.0
    gateway: GatewayConfig = GatewayConfig()
    #: the ``[security]`` section (CURVE keys for the SMS link, bearer tokens)
    security: object = None
    #: the ``[tracing]`` section (None: no spans)
    tracing: object = None

    @property
    def tokens(self) -> dict[str, str]:
        return dict(getattr(self.security, "tokens", None) or {})

    @property
    def allowed_hosts(self) -> list[str]:
        """``[gateway] allowed_hosts`` plus the listen address when it is one IP.

        An IP literal cannot be re-pointed by DNS, so answering to the address
        the gateway was told to listen on never opens it to DNS rebinding.
        """
        hosts = list(self.gateway.allowed_hosts)
        try:
            ip = ipaddress.ip_address(self.host)
        except ValueError:
            return hosts
        if not ip.is_unspecified:
            hosts.append(f"[{ip}]" if ip.version == 6 else str(ip))
        return hosts


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``:PORT``, ``[::1]:PORT``) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]") or "127.0.0.1"
    try:
        n = int(port)
    except ValueError:
        raise errors.ConfigError(f"[gateway] listen = {text!r}: expected HOST:PORT") from None
    if not 0 <= n <= 65535:
        raise errors.ConfigError(f"[gateway] listen = {text!r}: port out of range")
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
        raise errors.ConfigError(f"[gateway] {exc}") from None
    host, port = parse_listen(gw.listen)
    return Settings(sms=gw.sms or cfg.global_.sms, host=host, port=port,
                    timeout=cfg.global_.timeout, gateway=gw, security=cfg.security,
                    tracing=getattr(cfg, "tracing", None))
