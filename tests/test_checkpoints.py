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


def test_large_kept_weights_are_stored_in_parts_and_joined_on_use(tmp_path, monkeypatch):
    import zoo.checkpoints as ck
    from zoo.io import sha256_file

    monkeypatch.setenv(ck.ARTIFACTS_ENV, str(tmp_path / "artifacts"))
    state = {"model": {"w": torch.arange(3000, dtype=torch.float32)}, "meta": {"epoch": 3}}
    src = tmp_path / "cache" / "best.pt"
    digest = save_checkpoint(src, state)
    size = src.stat().st_size
    monkeypatch.setattr(ck, "KEPT_PART_BYTES", size // 3 + 1)  # three parts
    kept = tmp_path / "trained" / "best.pt"
    parts = ck.write_kept(src, kept)
    assert [p.name for p in parts] == ["best.pt.part000", "best.pt.part001", "best.pt.part002"]
    assert not kept.exists() and ck.weights_exist(kept) and sum(p.stat().st_size for p in parts) == size
    (tmp_path / "trained" / "best.json").write_bytes(src.with_suffix(".json").read_bytes())
    joined = ck.resolve_weights(kept)
    assert joined.parent == tmp_path / "artifacts" / "joined" and sha256_file(joined) == digest
    assert torch.equal(read_checkpoint(kept)["model"]["w"], state["model"]["w"])
    # a stale or missing part is caught by the sidecar's sha256, never loaded
    joined.unlink()
    parts[1].write_bytes(parts[1].read_bytes()[:-1] + b"x")
    with pytest.raises(CheckpointError, match="do not join"):
        read_checkpoint(kept)
    assert not joined.exists()
    # back under the limit: one whole file, the parts removed
    monkeypatch.setattr(ck, "KEPT_PART_BYTES", size)
    assert ck.write_kept(src, kept) == [kept] and ck.kept_parts(kept) == [] and ck.resolve_weights(kept) == kept
    ck.write_kept(src, kept, part_bytes=size // 2 + 1)
    ck.remove_kept(kept)
    assert not ck.weights_exist(kept) and list(kept.parent.glob("best.pt*")) == []
