"""The host-path chokepoint (spear/runtimes/hostpaths.py) on its own.

Every runtime that reaches a host directory goes through
``HostPaths.grant``; these tests attack that one function. The same rule
through real runtimes and a real Spearlet is in test_grants.py.
"""

from __future__ import annotations

import os

import pytest

from spear import errors
from spear.config import Config, SecurityConfig, SpearletConfig, load_config
from spear.errors import ConfigError
from spear.runtimes.hostpaths import HostPaths, Root, parse_root


@pytest.fixture
def tree(tmp_path):
    """allowed/ (a root holding data/ and a symlink out), outside/ (not a root)."""
    allowed = tmp_path / "allowed"
    (allowed / "data").mkdir(parents=True)
    (allowed / "data" / "file.txt").write_text("x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (allowed / "out-link").symlink_to(outside)
    (allowed / "in-link").symlink_to(allowed / "data")
    return tmp_path


def denied(hp: HostPaths, path, *, write=False) -> errors.PermissionDenied:
    with pytest.raises(errors.PermissionDenied) as ei:
        hp.grant(str(path), write=write, what=f"grant 'dir:{path}'")
    return ei.value


def test_no_roots_refuses_everything_and_says_so(tree):
    hp = HostPaths()
    for path in ("/", "/etc", str(tree / "allowed"), "/definitely/not/here"):
        e = denied(hp, path)
        assert f"grant 'dir:{path}'" in e.message
        assert "allows no host paths" in e.message and "host_roots" in e.message
        assert e.code == "PERMISSION_DENIED"


def test_outside_the_roots_is_refused_and_the_roots_are_named(tree):
    hp = HostPaths([str(tree / "allowed"), f"{tree}/rw-root:rw"])
    e = denied(hp, tree / "outside")
    assert f"dir:{tree / 'outside'}" in e.message
    assert f"{tree / 'allowed'} (ro)" in e.message and f"{tree / 'rw-root'} (rw)" in e.message
    assert e.details["allowed_roots"] == [f"{tree / 'allowed'} (ro)", f"{tree / 'rw-root'} (rw)"]
    denied(hp, "/")
    denied(hp, tree)  # the parent of a root is not inside it


def test_dotdot_and_symlink_escapes_are_refused(tree):
    hp = HostPaths([str(tree / "allowed")])
    e = denied(hp, f"{tree}/allowed/../outside")
    assert "resolved" in e.message and "outside the host roots" in e.message
    denied(hp, f"{tree}/allowed/data/../../outside")
    denied(hp, tree / "allowed" / "out-link")
    denied(hp, tree / "allowed" / "out-link" / ".")
    # a symlink that stays inside the root is followed: the real path is handed out
    d = hp.grant(str(tree / "allowed" / "in-link"), write=False, what="x")
    assert d.path == str((tree / "allowed" / "data").resolve())
    d.close()


def test_the_resolved_path_outside_a_root_is_not_revealed(tree):
    hp = HostPaths([str(tree / "allowed")])
    e = denied(hp, tree / "allowed" / "out-link")
    assert str(tree / "outside") not in e.message


def test_spearlets_own_directories_are_refused_even_inside_a_root(tree, caplog):
    data = tree / "allowed" / "spearlet-data"
    keys = tree / "allowed" / "keys"
    conf = tree / "allowed" / "etc"
    for d in (data, keys, conf):
        (d / "sub").mkdir(parents=True)
    config = Config(spearlet=SpearletConfig(host_roots=[f"{tree}/allowed:rw"]),
                    security=SecurityConfig(key=str(keys / "node.key_secret")))
    hp = HostPaths.from_config(config, data_dir=data, config_file=str(conf / "spear.toml"))
    for path in (data, data / "sub", keys, keys / "sub", conf, conf / "sub"):
        e = denied(hp, path)
        assert "never granted" in e.message and str(tree / "allowed") in e.message
        if not str(path).startswith(str(data)):  # the Spearlet's own paths are not revealed
            assert str(data) not in e.message and str(keys) not in e.message.replace(str(path), "")
    # the node's log names the directory (warning); the deployer's error does not
    assert any(r.levelname == "WARNING" and str(data) in r.getMessage() for r in caplog.records)
    # ...and so is anything that holds one of them (the root itself, here)
    e = denied(hp, tree / "allowed")
    assert "contains" in e.message
    # a symlink to them changes nothing
    (tree / "allowed" / "data" / "to-keys").symlink_to(keys)
    denied(hp, tree / "allowed" / "data" / "to-keys")
    # next to them is fine
    d = hp.grant(str(tree / "allowed" / "data"), write=True, what="x")
    assert d.path == str(tree / "allowed" / "data") and d.writable
    d.close()


def test_a_key_file_reached_through_a_symlink_forbids_its_real_directory(tree):
    real_keys = tree / "allowed" / "real-keys"
    real_keys.mkdir()
    (real_keys / "node.key_secret").write_text("k")
    (tree / "outside" / "node.key_secret").symlink_to(real_keys / "node.key_secret")
    config = Config(spearlet=SpearletConfig(host_roots=[str(tree / "allowed")]),
                    security=SecurityConfig(key=str(tree / "outside" / "node.key_secret")))
    hp = HostPaths.from_config(config, data_dir=tree / "data")
    denied(hp, real_keys)


def test_proc_is_never_granted(tree):
    hp = HostPaths(["/"])
    for path in ("/", "/proc", "/proc/self", f"/proc/{os.getpid()}"):
        e = denied(hp, path)
        assert "never granted" in e.message


def test_write_needs_a_writable_root(tree):
    ro, rw = tree / "allowed", tree / "outside"
    hp = HostPaths([str(ro), f"{rw}:rw"])
    e = denied(hp, ro / "data", write=True)
    assert "read-only" in e.message and str(ro) in e.message
    denied(hp, ro, write=True)
    hp.grant(str(ro / "data"), write=False, what="x").close()
    hp.grant(str(rw), write=True, what="x").close()
    # the deepest root decides, and a writable grant may not hold a read-only root
    nested = HostPaths([f"{tree}:rw", str(ro)])
    denied(nested, ro / "data", write=True)
    denied(nested, tree, write=True)
    nested.grant(str(rw), write=True, what="x").close()
    nested.grant(str(tree), write=False, what="x").close()


def test_malformed_or_missing_paths_are_invalid_argument(tree):
    hp = HostPaths([str(tree / "allowed")])
    for path in ("", "relative/path", "allowed", "/a\0b"):
        with pytest.raises(errors.InvalidArgument) as ei:
            hp.grant(path, write=False, what="grant")
        assert not isinstance(ei.value, errors.PermissionDenied)
    for path in (tree / "allowed" / "missing", tree / "allowed" / "data" / "file.txt"):
        with pytest.raises(errors.InvalidArgument, match="not an existing directory"):
            hp.grant(str(path), write=False, what="grant")
    # outside the roots, existence is never looked at: no probing of the host
    denied(hp, tree / "outside" / "missing")


def test_the_grant_is_a_handle_not_a_name(tree):
    """Renaming the directory, or swapping a symlink in, after the check
    changes nothing: the runtime opens the handle."""
    hp = HostPaths([str(tree / "allowed")])
    d = hp.grant(str(tree / "allowed" / "data"), write=False, what="x")
    assert d.handle_path.startswith("/proc/self/fd/")
    os.rename(tree / "allowed" / "data", tree / "allowed" / "moved")
    (tree / "allowed" / "data").symlink_to(tree / "outside")
    assert os.listdir(d.handle_path) == ["file.txt"]
    fd = d.fd
    d.close()
    with pytest.raises(OSError):
        os.fstat(fd)


def test_a_swap_between_the_check_and_the_open_is_caught(tree, monkeypatch):
    """The real path of the opened handle is checked again: a resolver that
    missed a symlink (as a swap right after the check would) is not enough."""
    from spear.runtimes import hostpaths

    monkeypatch.setattr(hostpaths.os.path, "realpath", lambda p: os.path.normpath(p))
    hp = HostPaths([str(tree / "allowed")])
    denied(hp, tree / "allowed" / "out-link")


def test_roots_parse_and_config_validates_them(tmp_path):
    assert parse_root("/srv/data") == Root("/srv/data", False)
    assert parse_root("/srv/out:rw") == Root("/srv/out", True)
    assert parse_root("/srv/x:ro") == Root("/srv/x", False)
    for bad in ("srv", "", ":rw", "./x:rw"):
        with pytest.raises(errors.InvalidArgument):
            parse_root(bad)
    assert load_config(env={}).spearlet.host_roots == []  # none by default
    cfg = tmp_path / "spear.toml"
    cfg.write_text('[spearlet]\nhost_roots = ["/srv/data", "/srv/out:rw"]\n')
    assert load_config(cfg, env={}).spearlet.host_roots == ["/srv/data", "/srv/out:rw"]
    cfg.write_text('[spearlet]\nhost_roots = ["/srv/data", "srv/out:rw"]\n')
    with pytest.raises(ConfigError) as ei:
        load_config(cfg, env={})
    assert "[spearlet] host_roots" in ei.value.message and "srv/out:rw" in ei.value.message
    env = {"SPEAR_SPEARLET_HOST_ROOTS": "/srv/a, /srv/b:rw"}
    assert load_config(env=env).spearlet.host_roots == ["/srv/a", "/srv/b:rw"]
    with pytest.raises(ConfigError, match="SPEAR_SPEARLET_HOST_ROOTS|host_roots"):
        load_config(env={"SPEAR_SPEARLET_HOST_ROOTS": "relative"})
    flags = {"spearlet.host_roots": ["/x:rw"]}
    assert load_config(env={}, overrides=flags).spearlet.host_roots == ["/x:rw"]


def test_private_paths_are_never_granted(tree):
    config = Config(spearlet=SpearletConfig(host_roots=[str(tree / "allowed")],
                                            private_paths=[str(tree / "allowed" / "data")]))
    hp = HostPaths.from_config(config, data_dir=tree / "node")
    for path in (tree / "allowed" / "data", tree / "allowed"):
        assert "private_paths" in denied(hp, path).message
    with pytest.raises(ConfigError):
        load_config(env={"SPEAR_SPEARLET_PRIVATE_PATHS": '["relative"]'})


def test_from_config_forbids_data_keys_config_and_store(tmp_path):
    config = Config(security=SecurityConfig(key="/k/node.key_secret", sms_key="/pub/sms.key"))
    hp = HostPaths.from_config(config, data_dir=tmp_path / "d", config_file="/etc/spear/spear.toml")
    got = {p for p, _ in hp.forbidden}
    assert {str(tmp_path / "d"), "/k", "/pub", "/etc/spear", "/proc",
            os.path.realpath(config.storage.path)} <= got
    assert HostPaths.from_config(Config(), data_dir=tmp_path).roots == ()


def test_a_directory_forbidden_later_is_refused_with_what_it_is(tree):
    # a runtime forbids its code cache once it knows where it is
    hp = HostPaths([str(tree / "allowed")])
    hp.grant(str(tree / "allowed" / "data"), write=False, what="grant").close()
    hp.forbid(tree / "allowed" / "data", "the code cache")
    hp.forbid(tree / "allowed" / "data", "the code cache")  # twice: listed once
    assert [w for _, w in hp.forbidden].count("the code cache") == 1
    for path in (tree / "allowed" / "data", tree / "allowed", tree / "allowed" / "in-link"):
        e = denied(hp, path)
        assert "the code cache" in e.message and "never granted" in e.message
