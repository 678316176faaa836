"""Folders written beside their place and renamed into it: never half-written, never left behind."""

import pytest

from selprune import atomic


def test_a_staged_folder_replaces_the_old_one_whole(tmp_path):
    target = tmp_path / "deep" / "model"
    for text in ("first", "second"):
        with atomic.staged_folder(target) as tmp:
            tmp.mkdir()
            (tmp / "weights").write_text(text)
            assert not target.exists() or (target / "weights").read_text() == "first"  # untouched while writing
    assert (target / "weights").read_text() == "second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["model"]


def test_a_failed_write_leaves_the_old_folder_and_nothing_beside_it(tmp_path):
    target = tmp_path / "model"
    with atomic.staged_folder(target) as tmp:
        tmp.mkdir()
        (tmp / "weights").write_text("kept")
    with pytest.raises(OSError), atomic.staged_folder(target) as tmp:
        tmp.mkdir()
        (tmp / "weights").write_text("half")
        raise OSError("disk full")
    assert (target / "weights").read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
