"""csrc/notify.c reports MQ_E* codes (mqerr.h), the binding turns them into OSError with the
real errno: the codes name the failing step, the errno the OS reason, and they never mix."""

from __future__ import annotations

import errno
import os

import pytest

from mqlite import _core


def test_symlinked_notify_file_is_refused_with_eloop(tmp_path):
    target = tmp_path / "target"
    os.symlink(target, tmp_path / "notify.shm")
    with pytest.raises(OSError, match="cannot open or create the notify file") as info:
        _core.Notifier(str(tmp_path / "notify.shm"), slots=4)
    assert info.value.errno == errno.ELOOP
    assert not target.exists()


def test_missing_directory_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        _core.Notifier(str(tmp_path / "missing" / "notify.shm"), slots=4)
    assert info.value.errno == errno.ENOENT
    assert info.value.filename == str(tmp_path / "missing" / "notify.shm")


def test_unreadable_file_is_permission_error(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root ignores file permissions")
    p = tmp_path / "notify.shm"
    p.write_bytes(b"")
    p.chmod(0o000)
    with pytest.raises(PermissionError):
        _core.Notifier(str(p), slots=4)
