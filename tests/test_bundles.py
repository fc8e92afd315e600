"""Code bundles: deterministic packing, and an unpack that trusts nothing in the archive."""

from __future__ import annotations

import io
import os
import stat
import struct
import threading
import zipfile

import pytest

from spear import bundles, errors
from tests.helpers import make_bundle


def _tree(root, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _zip(entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for info, data in entries:
            zf.writestr(info, data)
    return buf.getvalue()


def _names(data: bytes) -> list[str]:
    return zipfile.ZipFile(io.BytesIO(data)).namelist()


# ------------------------------------------------------------------ pack


def test_pack_is_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    files = {"app.py": "def f(d):\n    return d\n", "pkg/__init__.py": "", "pkg/util.py": "X = 1\n"}
    _tree(a, files)
    _tree(b, dict(reversed(list(files.items()))))  # made in another order, at other times
    os.utime(b / "app.py", (1_000_000, 1_000_000))
    packed = bundles.pack(str(a))
    assert packed == bundles.pack(str(a)) == bundles.pack(str(b))
    assert bundles.sha256(packed) == bundles.sha256(bundles.pack(str(b)))
    assert _names(packed) == ["app.py", "pkg/__init__.py", "pkg/util.py"]
    (b / "app.py").write_text("changed\n")
    assert bundles.pack(str(b)) != packed


def test_pack_skips_caches_environments_and_links(tmp_path):
    _tree(tmp_path, {"app.py": "x", ".git/config": "x", "__pycache__/app.cpython-311.pyc": "x",
                     ".venv/bin/python": "x", "pkg/mod.pyc": "x", "pkg/mod.py": "x",
                     "pkg/__pycache__/mod.pyc": "x"})
    (tmp_path / "link.py").symlink_to(tmp_path / "app.py")
    (tmp_path / "linkdir").symlink_to(tmp_path / "pkg")
    assert _names(bundles.pack(str(tmp_path))) == ["app.py", "pkg/mod.py"]


def test_pack_refuses_what_is_not_a_directory(tmp_path):
    with pytest.raises(errors.InvalidArgument):
        bundles.pack(str(tmp_path / "missing"))


# ------------------------------------------------------------------ unpack


def test_unpack_makes_files_readable_and_not_writable_by_others(tmp_path):
    data = make_bundle({"app.py": "A = 1\n", "pkg/mod.py": "B = 2\n"})
    dest = bundles.unpack(data, str(tmp_path / "code" / bundles.sha256(data)))
    assert (tmp_path / "code" / bundles.sha256(data) / "pkg" / "mod.py").read_text() == "B = 2\n"
    for top, dirs, files in os.walk(dest):
        assert stat.S_IMODE(os.stat(top).st_mode) == 0o755
        for name in files:
            assert stat.S_IMODE(os.stat(os.path.join(top, name)).st_mode) == 0o644
    assert os.listdir(tmp_path / "code") == [bundles.sha256(data)]  # no temporary left


@pytest.mark.parametrize("name", ["/etc/evil.py", "../evil.py", "a/../../evil.py", "a//b.py",
                                  "./a.py", "a\\b.py"])
def test_unpack_refuses_names_outside_the_directory(tmp_path, name):
    data = _zip([("ok.py", b"x"), (name, b"evil")])
    with pytest.raises(errors.InvalidArgument, match="plain relative path"):
        bundles.unpack(data, str(tmp_path / "dest"))
    assert os.listdir(tmp_path) == []  # nothing left, not even the temporary
    assert not os.path.exists("/etc/evil.py")


def test_unpack_refuses_symlink_entries(tmp_path):
    info = zipfile.ZipInfo("link.py")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    with pytest.raises(errors.InvalidArgument, match="not a regular file"):
        bundles.unpack(_zip([(info, b"/etc/shadow")]), str(tmp_path / "dest"))
    assert os.listdir(tmp_path) == []


def _lying(size: int, real: bytes) -> bytes:
    """A stored zip whose one entry declares ``size`` bytes (in both headers) but holds ``real``."""
    data = bytearray(_zip([(zipfile.ZipInfo("big.py"), real)]))
    for sig, off in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.index(sig) + off  # the uncompressed size field of each header
        struct.pack_into("<I", data, at, size)
    return bytes(data)


def test_unpack_refuses_an_entry_larger_than_it_declares(tmp_path):
    data = _lying(10, b"x" * 100_000)
    with pytest.raises(errors.InvalidArgument, match="big.py"):
        bundles.unpack(data, str(tmp_path / "dest"))
    assert os.listdir(tmp_path) == []


def test_unpack_refuses_too_many_files_and_too_many_bytes(tmp_path):
    many = make_bundle({f"m{i}.py": "" for i in range(30)})
    with pytest.raises(errors.InvalidArgument, match="entries"):
        bundles.unpack(many, str(tmp_path / "a"), max_files=20)
    big = make_bundle({"a.bin": b"\0" * 600_000, "b.bin": b"\0" * 600_000})  # compresses to little
    assert len(big) < 10_000
    with pytest.raises(errors.InvalidArgument, match="MiB"):
        bundles.unpack(big, str(tmp_path / "b"), max_bytes=1 << 20)
    assert os.listdir(tmp_path) == []


def test_unpack_refuses_what_is_not_a_zip(tmp_path):
    with pytest.raises(errors.InvalidArgument, match="not a code bundle"):
        bundles.unpack(b"\0asm not a zip", str(tmp_path / "dest"))


def test_a_race_of_unpacks_leaves_one_whole_directory(tmp_path):
    files = {f"pkg{i}/mod{j}.py": f"V = {i * 100 + j}\n" for i in range(10) for j in range(20)}
    data = make_bundle(files)
    dest = str(tmp_path / bundles.sha256(data))
    failures: list[BaseException] = []
    start = threading.Barrier(6)

    def unpack() -> None:
        start.wait()
        try:
            assert bundles.unpack(data, dest) == dest
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=unpack) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert os.listdir(tmp_path) == [os.path.basename(dest)]
    got = {os.path.relpath(os.path.join(top, n), dest): open(os.path.join(top, n)).read()
           for top, _, names in os.walk(dest) for n in names}
    assert got == files
