import pytest
import torch
import torch.nn as nn

from zoo.checkpoints import CheckpointError, load_state, read_checkpoint, save_checkpoint


class Tiny(nn.Module):
    def __init__(self, n=3):
        super().__init__()
        self.conv = nn.Conv2d(3, n, 1)


def test_roundtrip_with_metadata_and_sidecar(tmp_path):
    m = Tiny()
    digest = save_checkpoint(tmp_path / "best.pt", {"model": m.state_dict(), "meta": {"model": "tiny", "epoch": 3}})
    ckpt = read_checkpoint(tmp_path / "best.pt")
    assert ckpt["meta"]["epoch"] == 3 and "created" in ckpt["meta"]
    side = (tmp_path / "best.json").read_text()
    assert digest in side
    assert not list(tmp_path.glob(".*tmp"))  # nothing half-written left behind


def test_plain_state_dict_loads(tmp_path):
    torch.save(Tiny().state_dict(), tmp_path / "plain.pth")
    ckpt = read_checkpoint(tmp_path / "plain.pth")
    load_state(Tiny(), ckpt["model"], source="plain.pth")


def test_mismatch_lists_keys(tmp_path):
    state = Tiny(5).state_dict()
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"unexpected keys: extra.weight.*shape mismatches: conv.weight"):
        load_state(Tiny(3), state, source="x")


def test_corrupt_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        read_checkpoint(bad)


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, path)
    with pytest.raises(CheckpointError):
        read_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "nope.pt")
