"""CURVE encryption and ZAP authentication.

When ``[security] key`` names a key file, every socket of the process uses
CURVE: servers (the SMS's and each Spearlet's ROUTER) with their own key
pair, clients with theirs plus the server's public key. A ZAP handler in a
thread of this process admits only public keys listed under a role; the
role and the public key travel with every message as the ZMQ ``User-Id``
property (``"ROLE KEY"``), and the ROUTER checks the role against the
operation (:func:`spear.roles.allowed`) before any handler runs; handlers
that need to know *who* spoke (the SMS binding a node id to a key) read the key.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from .. import errors
from ..fsmodes import private_dir, private_key_file
from ..roles import ROLES

log = logging.getLogger("spear.security")

DOMAIN = "spear"


def _read_public(entry: str, base: Path | None = None) -> bytes:
    """A z85 public key: the key itself (40 chars) or a key file written by keygen."""
    if len(entry) == 40 and not os.path.exists(entry):
        return entry.encode()
    path = Path(entry)
    if base is not None and not path.is_absolute():
        path = base / path
    try:
        public, _ = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise errors.ConfigError(f"[security] cannot read public key {path}: {exc}") from None
    return public


def _read_secret(path: str) -> tuple[bytes, bytes]:
    private_key_file(path)  # readable by others: fixed to 0600 (warned) or refused
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise errors.ConfigError(f"[security] cannot read key {path}: {exc}") from None
    if secret is None:
        raise errors.ConfigError(f"[security] key {path} has no secret part "
                                 f"(use the .key_secret file written by `spear keygen`)")
    return public, secret


#: a public key file larger than this is not a key file
_KEY_FILE_MAX = 4096
_PUBLIC_LINE = re.compile(r'^\s*public-key\s*=\s*"([^"]{40})"\s*$', re.M)


def _open_owned(path: Path, flags: int) -> int:
    """Open ``path`` (no symlink followed) if this user owns it and neither group
    nor others may write it; the fd. Checked on the open file, so a swap after
    the check changes nothing. Raises OSError or ValueError saying why not."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise ValueError(f"owned by uid {st.st_uid}, not by this process's user")
        if st.st_mode & 0o022:
            raise ValueError(f"writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})")
        return fd
    except BaseException:
        os.close(fd)
        raise


def _read_key_file(path: Path) -> bytes:
    """The z85 public key of one key file written by ``spear keygen``."""
    fd = _open_owned(path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise ValueError("not a regular file")
        text = fh.read(_KEY_FILE_MAX + 1)
    if len(text) > _KEY_FILE_MAX:
        raise ValueError("too large for a key file")
    m = _PUBLIC_LINE.search(text.decode("ascii", "replace"))
    if m is None:
        raise ValueError("no public-key line")
    key = m.group(1).encode()
    if len(z85.decode(key)) != 32:
        raise ValueError("not a z85 CURVE key")
    return key


def read_keys_dir(directory: str | Path) -> dict[bytes, str] | None:
    """The node keys of ``directory``: z85 public key -> file name, from its
    ``*.key`` files. Only a directory and files owned by this user and not
    writable by group or others count; a file that fails is logged and
    skipped. None when the directory itself cannot be trusted or read (the
    caller keeps what it had)."""
    directory = Path(directory)
    try:
        os.close(_open_owned(directory, os.O_RDONLY | os.O_DIRECTORY))
        names = sorted(n for n in os.listdir(directory) if n.endswith(".key"))
    except (OSError, ValueError) as exc:
        log.error("SECURITY: node keys directory %s not read: %s", directory, exc)
        return None
    keys: dict[bytes, str] = {}
    for name in names:
        try:
            keys.setdefault(_read_key_file(directory / name), name)
        except (OSError, ValueError) as exc:
            log.warning("SECURITY: node key file %s skipped: %s", directory / name, exc)
    return keys


@dataclass
class Security:
    """Key material and role table of one process; ``enabled`` False means open."""

    public: bytes = b""
    secret: bytes = b""
    sms_public: bytes = b""
    roles: dict[bytes, str] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    #: node id -> z85 public key bound to it by configuration
    node_keys: dict[str, str] = field(default_factory=dict)

    #: the node keys admitted from ``[security] node_keys_dir`` (the rest of
    #: ``roles`` comes from the configuration and is never changed)
    dir_keys: dict[bytes, str] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return bool(self.secret)

    def admit_node_keys(self, keys: dict[bytes, str]) -> tuple[list[str], list[str]]:
        """Make ``keys`` the node keys of the keys directory: the new ones are
        admitted as nodes, those gone are refused from the next connection on
        (keys the configuration lists keep their role). The ZAP handler reads
        ``roles`` as it is, so this takes effect at once; each change is one
        dict operation, safe against the handler's thread. Returns the file
        names added and removed."""
        added, removed = [], []
        for key, name in keys.items():
            if key not in self.roles:
                self.roles[key] = "node"
                self.dir_keys[key] = name
                added.append(name)
        for key in [k for k in self.dir_keys if k not in keys]:
            removed.append(self.dir_keys.pop(key))
            self.roles.pop(key, None)
        for name in added:
            log.info("SECURITY: node key %s admitted", name)
        for name in removed:
            log.warning("SECURITY: node key %s removed: its node is refused from now on", name)
        return added, removed

    def role_now(self, role: str, key_z85: str) -> str:
        """The role of a caller whose connection was admitted with ``role``: ""
        once its key was removed from the keys directory, so a connection made
        before the removal is refused too."""
        if role == "node" and key_z85.encode() not in self.roles:
            return ""
        return role

    @classmethod
    def from_config(cls, sec) -> "Security":
        """Build from a :class:`spear.config.SecurityConfig`."""
        if not sec.key:
            return cls(tokens=dict(sec.tokens))
        public, secret = _read_secret(sec.key)
        sms_public = _read_public(sec.sms_key) if sec.sms_key else b""
        roles: dict[bytes, str] = {}
        for role in ROLES:
            for entry in getattr(sec, role):
                roles[_read_public(entry)] = role
        node_keys = {node: _read_public(entry).decode() for node, entry in sec.node_keys.items()}
        return cls(public=public, secret=secret, sms_public=sms_public, roles=roles,
                   tokens=dict(sec.tokens), node_keys=node_keys)

    # ---------------------------------------------------------------- sockets

    def serve(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CURVE server (call before bind)."""
        if not self.enabled:
            return
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True
        sock.zap_domain = DOMAIN.encode()

    def connect_to(self, sock: zmq.Socket, server_public: bytes | None = None) -> None:
        """Make ``sock`` a CURVE client of ``server_public`` (default: the SMS)."""
        if not self.enabled:
            return
        key = server_public or self.sms_public
        if not key:
            raise errors.ConfigError("[security] sms_key is needed to connect with CURVE")
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_serverkey = key

    def public_z85(self) -> str:
        return self.public.decode() if self.public else ""


def user_id(role: str, public_z85: str) -> str:
    """The ZAP User-Id of an admitted key: ``"ROLE KEY"`` (see :func:`parse_user`)."""
    return f"{role} {public_z85}"


def parse_user(user: str | None) -> tuple[str, str]:
    """``(role, public key z85)`` from a message's User-Id; ``("", "")`` when absent."""
    if not user:
        return "", ""
    role, _, key = user.partition(" ")
    return role, key


class _RoleAuthenticator(ThreadAuthenticator):
    """ZAP in a thread: admit listed keys; role and key become the User-Id.

    The key travels with every message as part of its User-Id, so a daemon
    knows *which* peer spoke, not only with what rights: identity is the key.
    """

    def __init__(self, ctx: zmq.Context, roles: dict[bytes, str]) -> None:
        super().__init__(ctx, log=logging.getLogger("spear.zap"))
        self.role_of = roles

    def curve_user_id(self, client_public_key: bytes) -> str:
        from zmq.utils import z85

        key = z85.encode(client_public_key)
        role = self.role_of.get(key, "")
        return user_id(role, key.decode()) if role else ""


class _Provider:
    def __init__(self, roles: dict[bytes, str]) -> None:
        self.roles = roles

    def callback(self, domain: str, key: bytes) -> bool:
        ok = key in self.roles
        if not ok:
            log.warning("refused CURVE client with unknown public key %s", key.decode()[:12] + "...")
        return ok


_auth: _RoleAuthenticator | None = None


def start_authenticator(ctx: zmq.Context, security: Security) -> None:
    """Start this process's ZAP handler (once); no-op when security is off."""
    global _auth
    if not security.enabled or _auth is not None:
        return
    _auth = _RoleAuthenticator(ctx, security.roles)
    _auth.start()
    _auth.configure_curve_callback(DOMAIN, credentials_provider=_Provider(security.roles))


def keygen(directory: str | Path, name: str) -> tuple[Path, Path, str]:
    """Write ``NAME.key`` (public) and ``NAME.key_secret``; returns paths and z85.

    Both files are 0600 in a 0700 directory. They are written in a fresh 0700
    directory inside it and then moved into place, so the secret is never
    readable by others, not even for a moment, whatever the umask.
    """
    directory = private_dir(directory, what="keys directory", recursive=False)
    staging = tempfile.mkdtemp(prefix=f".{name}.", dir=directory)
    try:
        placed = []
        for made in zmq.auth.create_certificates(staging, name):
            os.chmod(made, 0o600)
            target = directory / os.path.basename(made)
            os.replace(made, target)
            placed.append(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    public_file, secret_file = placed
    public, _ = zmq.auth.load_certificate(str(public_file))
    return public_file, secret_file, public.decode()


def warn_open(component: str) -> None:
    """Say loudly that this daemon runs without authentication."""
    log.warning("SECURITY: %s runs WITHOUT CURVE keys: traffic is plaintext and any peer "
                "that can reach its sockets may use every operation. Run `spear keygen` and "
                "set [security] key/sms_key/roles to lock it down.", component)
