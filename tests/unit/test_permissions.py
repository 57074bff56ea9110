"""Broker directories are private: modes under any umask, and refused unsafe directories.

Modes under a umask are checked in a fresh interpreter (the umask is
process-wide state, and a pytest process must not change it under other
tests).  Refusals must happen before LMDB opens anything: a planted symlink
must not be followed (its target stays untouched, or is not created).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

import mqlite

FILES = ("data.mdb", "lock.mdb", "notify.shm")

_MODES_SCRIPT = r"""
import json, os, stat, sys
os.umask(int(sys.argv[2], 8))
import mqlite
path, shared = sys.argv[1], sys.argv[3] == "1"
with mqlite.open(path, shared_group=shared) as b:
    b.create_topic("t", exist_ok=True)
    n = b.describe_topic("t").messages
    b.send("t", b"x")
    with b.producer() as p:
        p.send("t", b"y").result()
    assert len(b.consumer("t").poll(timeout=0)) == n + 2
out = {name: stat.S_IMODE(os.lstat(os.path.join(path, name)).st_mode)
       for name in ["."] + sorted(os.listdir(path))}
print(json.dumps(out))
"""


def _modes(run_python: Callable[..., subprocess.CompletedProcess[str]], path: Path,
           umask: int, shared: bool) -> dict[str, int]:
    res = run_python(_MODES_SCRIPT, str(path), f"{umask:o}", "1" if shared else "0")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077, 0o027], ids=lambda u: f"umask{u:03o}")
def test_private_modes_under_any_umask(run_python: Callable[..., subprocess.CompletedProcess[str]],
                                       tmp_broker_dir: Path, umask: int) -> None:
    modes = _modes(run_python, tmp_broker_dir, umask, shared=False)
    assert modes.pop(".") == 0o700
    assert set(FILES) <= set(modes)
    for name, mode in modes.items():
        assert mode == 0o600, f"{name} has mode {mode:o} under umask {umask:03o}"
    # Reopening (the files now exist) keeps the modes.
    modes = _modes(run_python, tmp_broker_dir, umask, shared=False)
    assert modes.pop(".") == 0o700
    assert all(m == 0o600 for m in modes.values()), modes


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077], ids=lambda u: f"umask{u:03o}")
def test_shared_group_modes_under_any_umask(
        run_python: Callable[..., subprocess.CompletedProcess[str]], tmp_broker_dir: Path,
        umask: int) -> None:
    modes = _modes(run_python, tmp_broker_dir, umask, shared=True)
    assert modes.pop(".") == 0o770
    assert set(FILES) <= set(modes)
    for name, mode in modes.items():
        assert mode == 0o660, f"{name} has mode {mode:o} under umask {umask:03o}"


def test_umask_in_this_process_is_restored_and_modes_private(tmp_broker_dir: Path) -> None:
    old = os.umask(0)
    try:
        with mqlite.open(tmp_broker_dir, durability="none") as b:
            b.create_topic("t")
            b.send("t", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(tmp_broker_dir.stat().st_mode) == 0o700
    for name in FILES:
        assert stat.S_IMODE((tmp_broker_dir / name).stat().st_mode) == 0o600


# -- refused directories -------------------------------------------------------------------------


def _snapshot(root: Path) -> dict[str, tuple[int, int, float]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[p] = (st.st_mode, st.st_size, st.st_mtime)
    return out


def test_symlinked_broker_directory_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    before = _snapshot(tmp_path)
    with pytest.raises(mqlite.BrokerDirectoryError, match="symlink"):
        mqlite.open(link)
    assert _snapshot(tmp_path) == before
    assert os.listdir(real) == []


def test_symlinked_existing_broker_directory_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    with mqlite.open(real, durability="none") as b:
        b.create_topic("t")
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(mqlite.BrokerDirectoryError):
        mqlite.open(link)
    # the real path still opens
    with mqlite.open(real, durability="none") as b:
        assert b.topics() == ["t"]


def test_dangling_symlink_as_broker_directory_is_refused(tmp_path: Path) -> None:
    link = tmp_path / "link"
    target = tmp_path / "not-there"
    link.symlink_to(target)
    with pytest.raises(mqlite.BrokerDirectoryError):
        mqlite.open(link)
    assert not target.exists()


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o720, 0o702, 0o777, 0o1777],
                         ids=lambda m: f"{m:o}")
def test_group_or_world_writable_directory_is_refused(tmp_broker_dir: Path, mode: int) -> None:
    tmp_broker_dir.mkdir()
    tmp_broker_dir.chmod(mode)
    with pytest.raises(mqlite.BrokerDirectoryError, match="writable"):
        mqlite.open(tmp_broker_dir)
    assert os.listdir(tmp_broker_dir) == []
    assert stat.S_IMODE(tmp_broker_dir.stat().st_mode) == mode  # not silently "fixed"


@pytest.mark.parametrize("mode", [0o700, 0o750, 0o755, 0o705], ids=lambda m: f"{m:o}")
def test_readable_but_not_writable_directory_modes_are_accepted(tmp_broker_dir: Path,
                                                               mode: int) -> None:
    tmp_broker_dir.mkdir()
    tmp_broker_dir.chmod(mode)
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        b.create_topic("t")
    for name in FILES:
        assert stat.S_IMODE((tmp_broker_dir / name).stat().st_mode) == 0o600


def test_shared_group_accepts_0770_but_refuses_world_writable(tmp_broker_dir: Path) -> None:
    tmp_broker_dir.mkdir()
    tmp_broker_dir.chmod(0o770)
    with mqlite.open(tmp_broker_dir, durability="none", shared_group=True) as b:
        b.create_topic("t")
    tmp_broker_dir.chmod(0o772)
    with pytest.raises(mqlite.BrokerDirectoryError):
        mqlite.open(tmp_broker_dir, shared_group=True)


def _make_broker(path: Path) -> None:
    with mqlite.open(path, durability="none") as b:
        b.create_topic("t")
        b.send("t", b"x")


@pytest.mark.parametrize("name", FILES)
def test_symlinked_broker_file_is_refused(tmp_path: Path, name: str) -> None:
    broker_dir = tmp_path / "broker"
    _make_broker(broker_dir)
    outside = tmp_path / "outside"
    outside.write_bytes(b"precious")
    os.replace(broker_dir / name, tmp_path / f"moved-{name}")
    (broker_dir / name).symlink_to(outside)
    with pytest.raises(mqlite.BrokerDirectoryError, match="symlink"):
        mqlite.open(broker_dir)
    assert outside.read_bytes() == b"precious"


@pytest.mark.parametrize("name", FILES)
def test_dangling_symlinked_broker_file_is_refused_and_target_not_created(
        tmp_broker_dir: Path, tmp_path: Path, name: str) -> None:
    tmp_broker_dir.mkdir(mode=0o700)
    target = tmp_path / f"planted-{name}"
    (tmp_broker_dir / name).symlink_to(target)
    with pytest.raises(mqlite.BrokerDirectoryError):
        mqlite.open(tmp_broker_dir)
    assert not target.exists()


def test_broker_path_that_is_a_file_is_refused(tmp_broker_dir: Path) -> None:
    tmp_broker_dir.write_bytes(b"not a dir")
    with pytest.raises(mqlite.BrokerDirectoryError):
        mqlite.open(tmp_broker_dir)
    assert tmp_broker_dir.read_bytes() == b"not a dir"


def test_broker_file_that_is_a_directory_is_refused(tmp_broker_dir: Path) -> None:
    tmp_broker_dir.mkdir(mode=0o700)
    (tmp_broker_dir / "data.mdb").mkdir()
    with pytest.raises(mqlite.BrokerDirectoryError):
        mqlite.open(tmp_broker_dir)


def test_missing_parent_is_refused(tmp_path: Path) -> None:
    with pytest.raises(mqlite.BrokerDirectoryError):
        mqlite.open(tmp_path / "no" / "such" / "parent")
    assert not (tmp_path / "no").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")
def test_directory_owned_by_another_user_is_refused(tmp_broker_dir: Path) -> None:
    tmp_broker_dir.mkdir(mode=0o700)
    os.chown(tmp_broker_dir, 65534, 65534)
    with pytest.raises(mqlite.BrokerDirectoryError, match="owned"):
        mqlite.open(tmp_broker_dir)
    assert os.listdir(tmp_broker_dir) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")
def test_data_file_owned_by_another_user_is_refused(tmp_broker_dir: Path) -> None:
    _make_broker(tmp_broker_dir)
    os.chown(tmp_broker_dir / "data.mdb", 65534, 65534)
    with pytest.raises(mqlite.BrokerDirectoryError, match="owned"):
        mqlite.open(tmp_broker_dir)
