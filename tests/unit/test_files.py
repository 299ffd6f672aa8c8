"""``firehose.files.write_atomically``: the old file or the new one, never part of either."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from firehose.files import write_atomically


def test_a_write_replaces_the_file_whole_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"old")
    assert write_atomically(str(path), [b"new ", b"content"]) == 11
    assert path.read_bytes() == b"new content"
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert sorted(os.listdir(tmp_path)) == ["f"]


def test_a_write_that_fails_half_way_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"old")

    def chunks() -> Iterator[bytes]:
        yield b"half of the new"
        raise OSError("disk full")

    for tmp in (None, str(tmp_path / "f.tmp-1")):
        with pytest.raises(OSError, match="disk full"):
            write_atomically(str(path), chunks(), tmp=tmp)
        assert path.read_bytes() == b"old"
        assert sorted(os.listdir(tmp_path)) == ["f"]
