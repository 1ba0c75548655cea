"""Checkpoint paths that are no readable file, and pickles that would run code, get a CheckpointError
that names the path and says what is wrong. Paths are looked at with stat, never opened first:
opening a FIFO blocks until something writes to it."""
from __future__ import annotations

import io
import os
import pickle
import re

import pytest
import torch

from convnext_fast import models
from convnext_fast.models import ConvNeXt
from convnext_fast.weights import CheckpointError, load_weights, read_checkpoint

SMALL = dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), num_classes=5)


def _refused(path, words: str) -> str:
    """The message of the CheckpointError that both entry points raise for ``path``."""
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    msg = str(info.value)
    assert repr(str(path)) in msg and words in msg, msg
    with pytest.raises(CheckpointError, match=re.escape(words)):
        load_weights(ConvNeXt(**SMALL), path)
    return msg


def test_directory(tmp_path):
    folder = tmp_path / "d.pth"
    folder.mkdir()
    _refused(folder, "it is a directory, not a file")


def test_fifo_is_not_opened(tmp_path):
    fifo = tmp_path / "pipe.pth"
    os.mkfifo(fifo)
    # A writer that holds the FIFO open with bytes in it: were the FIFO opened and read after all,
    # the read would return at once and the test fail on the message instead of hanging.
    keep = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    try:
        os.write(keep, b"not a checkpoint\n")
        _refused(fifo, "it is a FIFO (named pipe), not a regular file")
    finally:
        os.close(keep)


def test_dangling_symlink(tmp_path):
    link = tmp_path / "weights.pth"
    link.symlink_to(tmp_path / "deleted.pth")
    _refused(link, f"it is a symbolic link to {str(tmp_path / 'deleted.pth')!r}, which does not exist")


def test_symlink_to_a_directory(tmp_path):
    (tmp_path / "folder").mkdir()
    link = tmp_path / "weights.pth"
    link.symlink_to(tmp_path / "folder")
    _refused(link, "it is a directory")


def test_missing_file_is_both_checkpoint_and_file_not_found_error(tmp_path):
    missing = tmp_path / "none.pth"
    msg = _refused(missing, "checkpoint file not found")
    with pytest.raises(FileNotFoundError):
        read_checkpoint(missing)
    with pytest.raises(FileNotFoundError):
        load_weights(ConvNeXt(**SMALL), str(missing))
    assert "no such file" in msg


def test_factory_pretrained_directory_says_directory(tmp_path):
    with pytest.raises(ValueError, match="it is a directory"):
        models.convnext_atto(pretrained=str(tmp_path))


class _System:
    """Unpickling this would call os.system."""

    def __reduce__(self):
        return (os.system, ("echo this must not run",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("container", ["pickle", "torch.save"])
def test_pickle_that_would_run_code_is_refused_as_such(tmp_path, protocol, container):
    """Whatever the pickle protocol (the weights-only reader stops at protocol 4's framing before
    it reaches the call), the refusal says loading would run code, and names what it would call."""
    path = tmp_path / f"evil{protocol}.pth"
    payload = {"stem.0.weight": torch.ones(2), "x": _System()}
    if container == "pickle":
        path.write_bytes(pickle.dumps(payload, protocol=protocol))
    else:
        buf = io.BytesIO()
        torch.save(payload, buf, pickle_protocol=protocol)
        path.write_bytes(buf.getvalue())
    msg = _refused(path, "would run code")
    assert "system" in msg and "damaged" not in msg, msg
