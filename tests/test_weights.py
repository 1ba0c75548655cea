"""load_weights: layouts (official, timm, torchvision), files, wrappers, and bad checkpoints."""
from __future__ import annotations

import os

import pytest
import torch

import convnext_fast
from convnext_fast import models
from convnext_fast.models import ConvNeXt
from convnext_fast.weights import (CheckpointError, convert_state_dict, detect_layout, load_weights,
                                   read_checkpoint, unwrap_state_dict)

from model_helpers import rel_err, timm_convnext, timm_model, timm_to_official, tv_model

SMALL = dict(depths=(1, 1, 2, 1), dims=(16, 24, 32, 48), num_classes=5)


@pytest.fixture(autouse=True)
def _reference_backend():
    with convnext_fast.use_backend("reference"):
        yield


def _out(model, x):
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("name", ["convnext_atto", "convnext_tiny", "convnextv2_atto", "convnextv2_tiny"])
def test_official_layout_loads_and_matches(name):
    """Official state dicts (built by renaming timm keys, checked against timm's own filter)."""
    from timm.models.convnext import checkpoint_filter_fn

    ref = timm_model(name)
    official = timm_to_official(ref.state_dict())
    assert detect_layout(official) == "official"
    assert any(k.startswith("downsample_layers.") for k in official) and "head.weight" in official
    # The test's official dict is right: timm's own converter maps it back onto timm's keys.
    back = checkpoint_filter_fn(dict(official), ref)
    assert set(back) == set(ref.state_dict())
    model = getattr(models, name)(pretrained={"model": official})  # official checkpoints wrap under "model"
    x = torch.randn(2, 3, 32, 32)
    assert rel_err(_out(model, x), _out(ref, x)) < 2e-5


def test_torchvision_layout_detected_and_mapped():
    ref = tv_model("convnext_tiny")
    sd = ref.state_dict()
    assert detect_layout(sd) == "torchvision"
    timm_sd = convert_state_dict(sd, to="timm")
    assert timm_sd["stages.2.blocks.4.gamma"].shape == (384,)  # layer_scale (C, 1, 1) -> gamma (C,)
    assert timm_sd["stages.1.downsample.1.weight"] is sd["features.2.1.weight"]
    assert timm_sd["head.fc.weight"] is sd["classifier.2.weight"]


@pytest.mark.parametrize("layout", ["official", "torchvision"])
def test_convert_state_dict_round_trip(layout):
    sd = timm_convnext(**SMALL).state_dict()
    there = convert_state_dict(sd, to=layout)
    assert detect_layout(there) == layout
    back = convert_state_dict(there, to="timm")
    assert set(back) == set(sd)
    for k, v in sd.items():
        assert torch.equal(back[k].reshape(v.shape), v), k


def test_conv_mlp_weights_reshape_both_ways():
    """timm conv_mlp (1x1 conv) weights load into a Linear-MLP model and vice versa."""
    conv = timm_convnext(**SMALL, conv_mlp=True)
    lin = ConvNeXt(**SMALL)
    load_weights(lin, conv.state_dict())
    assert lin.stages[0].blocks[0].mlp.fc1.weight.dim() == 2
    x = torch.randn(1, 3, 32, 32)
    assert rel_err(_out(lin, x), _out(conv, x)) < 2e-5
    conv_ours = ConvNeXt(**SMALL, conv_mlp=True)
    load_weights(conv_ours, lin.state_dict())
    assert rel_err(_out(conv_ours, x), _out(conv, x)) < 2e-5


@pytest.mark.parametrize("fmt", [".pth", ".pt", ".safetensors"])
def test_files(tmp_path, fmt):
    ref = timm_convnext(**SMALL)
    path = tmp_path / f"weights{fmt}"
    if fmt == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    else:
        torch.save({"state_dict": {"module." + k: v for k, v in ref.state_dict().items()}, "epoch": 3}, path)
    model = ConvNeXt(**SMALL)
    assert load_weights(model, path) == ([], [])
    x = torch.randn(1, 3, 32, 32)
    assert rel_err(_out(model, x), _out(ref, x)) < 2e-5
    assert isinstance(read_checkpoint(str(path)), dict)


def test_factory_pretrained_file_device_and_dtype(tmp_path):
    ref = timm_model("convnext_atto")
    path = tmp_path / "atto.pth"
    torch.save(ref.state_dict(), path)
    model = models.convnext_atto(pretrained=path, dtype=torch.float64, device="cpu")
    assert all(p.dtype == torch.float64 and p.device.type == "cpu" for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())
    sd = ref.state_dict()
    model32 = models.convnext_atto(pretrained=sd)
    # the model never shares memory with the caller's state dict
    ptrs = {v.data_ptr() for v in sd.values()}
    assert not any(p.data_ptr() in ptrs for p in model32.parameters())
    x = torch.randn(1, 3, 32, 32)
    assert rel_err(_out(model, x.double()), _out(ref, x)) < 2e-5


def test_pretrained_with_another_class_count_keeps_all_but_the_classifier(tmp_path):
    """timm's fine-tuning call: pretrained weights and a new num_classes load everything but the
    classifier, which is initialized as in a new model; without `pretrained` the file must fit."""
    from convnext_fast import CheckpointError, create_model

    ref = timm_model("convnext_atto")
    path = tmp_path / "atto.pth"
    torch.save(ref.state_dict(), path)
    fresh = create_model("convnext_atto", num_classes=10)
    x = torch.randn(1, 3, 32, 32)
    for model in (create_model("convnext_atto", pretrained=True, checkpoint_path=path, num_classes=10),
                  create_model("convnext_atto", pretrained=True, pretrained_cfg_overlay={"file": str(path)},
                               num_classes=10),
                  models.convnext_atto(pretrained=ref.state_dict(), num_classes=10)):
        assert model.head.fc.out_features == 10 and model.num_classes == 10
        assert torch.equal(model.head.fc.bias, torch.zeros(10))  # a new head, not the checkpoint's
        assert abs(model.head.fc.weight.std().item() - fresh.head.fc.weight.std().item()) < 5e-3
        with torch.no_grad():
            assert rel_err(model.eval().forward_features(x), ref.eval().forward_features(x)) < 2e-5
    with pytest.raises(CheckpointError, match="head.fc.weight: checkpoint"):
        create_model("convnext_atto", checkpoint_path=path, num_classes=10)
    with pytest.raises(CheckpointError, match=r"atto.pth.*stem.0.weight: checkpoint \(40, 3, 4, 4\)"):
        create_model("convnext_femto", pretrained=True, checkpoint_path=path, num_classes=10)


def test_missing_keys_named():
    sd = timm_convnext(**SMALL).state_dict()
    del sd["stages.2.blocks.1.gamma"]
    del sd["stem.1.bias"]
    with pytest.raises(CheckpointError, match="missing keys") as info:
        load_weights(ConvNeXt(**SMALL), sd)
    assert "stages.2.blocks.1.gamma" in str(info.value) and "stem.1.bias" in str(info.value)
    missing, unexpected = load_weights(ConvNeXt(**SMALL), sd, strict=False)
    assert missing == ["stages.2.blocks.1.gamma", "stem.1.bias"] and unexpected == []


def test_unexpected_keys_named():
    sd = timm_convnext(**SMALL).state_dict()
    sd["stages.1.blocks.7.gamma"] = torch.zeros(24)
    with pytest.raises(CheckpointError, match="unexpected keys") as info:
        load_weights(ConvNeXt(**SMALL), sd)
    assert "stages.1.blocks.7.gamma" in str(info.value)


def test_unmappable_key_named():
    sd = timm_convnext(**SMALL).state_dict()
    sd["stages.0.blocks.0.mystery.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match="mystery"):
        load_weights(ConvNeXt(**SMALL), sd)


def test_shape_mismatch_named():
    sd = timm_convnext(**SMALL).state_dict()
    with pytest.raises(CheckpointError, match=r"head\.fc\.weight: checkpoint \(5, 48\) vs model \(9, 48\)"):
        load_weights(ConvNeXt(**{**SMALL, "num_classes": 9}), sd)


def test_headless_model_ignores_classifier():
    sd = timm_convnext(**SMALL).state_dict()
    model = ConvNeXt(**{**SMALL, "num_classes": 0})
    assert load_weights(model, sd) == ([], [])


def test_unknown_layout_and_non_state_dicts():
    with pytest.raises(CheckpointError, match="cannot tell the ConvNeXt layout"):
        load_weights(ConvNeXt(**SMALL), {"foo.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="non-tensor entries"):
        unwrap_state_dict({"stem.0.weight": torch.zeros(1), "epoch": 3})
    with pytest.raises(TypeError, match="file path or a state dict"):
        load_weights(ConvNeXt(**SMALL), 42)
    with pytest.raises(FileNotFoundError):
        load_weights(ConvNeXt(**SMALL), "/nonexistent/weights.pth")


class _Exploit:
    """Unpickling this calls open(marker, 'w'): code execution hidden in a checkpoint."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_with_code_is_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    sd = timm_convnext(**SMALL).state_dict()
    sd["stem.0.weight"] = _Exploit(str(marker))
    torch.save(sd, path)  # torch.save pickles the object; weights_only=False loading would run open()
    with pytest.raises(CheckpointError, match="would run code"):
        load_weights(ConvNeXt(**SMALL), path)
    with pytest.raises(CheckpointError):
        models.convnext_atto(pretrained=str(path))
    assert not marker.exists()
    # Control: the file really carries code; unrestricted loading runs it.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_full_model_pickle_rejected(tmp_path):
    path = tmp_path / "model.pth"
    torch.save(ConvNeXt(**SMALL), path)
    with pytest.raises(CheckpointError, match="state dict"):
        load_weights(ConvNeXt(**SMALL), path)
    assert os.path.exists(path)


def test_legacy_and_misnamed_pickle_with_code_refused(tmp_path):
    """The legacy (non-zip) torch.save format, and a pickle named .safetensors, are refused too."""
    marker = tmp_path / "pwned"
    sd = timm_convnext(**SMALL).state_dict()
    sd["stem.0.weight"] = _Exploit(str(marker))
    legacy, misnamed = tmp_path / "evil_legacy.pth", tmp_path / "evil.safetensors"
    torch.save(sd, legacy, _use_new_zipfile_serialization=False)
    torch.save(sd, misnamed)
    for path in (legacy, misnamed):
        with pytest.raises(CheckpointError, match="would run code") as info:
            load_weights(ConvNeXt(**SMALL), path)
        assert str(path) in str(info.value) and "io.open" in str(info.value)
    assert not marker.exists()


def _safetensors_bytes(sd):
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in sd.items()})


def test_format_told_by_content_not_name(tmp_path):
    """safetensors bytes in a .pth file and a torch.save zip in a .safetensors file both load."""
    ref = timm_convnext(**SMALL)
    st_as_pth, zip_as_st = tmp_path / "weights.pth", tmp_path / "weights.safetensors"
    st_as_pth.write_bytes(_safetensors_bytes(ref.state_dict()))
    torch.save(ref.state_dict(), zip_as_st)
    x = torch.randn(1, 3, 32, 32)
    for path in (st_as_pth, zip_as_st):
        model = ConvNeXt(**SMALL)
        assert load_weights(model, path) == ([], [])
        assert rel_err(_out(model, x), _out(ref, x)) < 2e-5


def _bad_files():
    """(file name, bytes, words the error must contain) for files that are no readable checkpoint."""
    import io
    import pickle

    sd = {"stem.0.weight": torch.arange(24, dtype=torch.float32).reshape(2, 3, 2, 2), "stem.0.bias": torch.ones(2)}
    st = _safetensors_bytes(sd)
    buf = io.BytesIO()
    torch.save(sd, buf)
    zipped = buf.getvalue()
    buf = io.BytesIO()
    torch.save(sd, buf, _use_new_zipfile_serialization=False)
    legacy = buf.getvalue()
    noise = bytes((37 * i + 11) % 251 for i in range(300))  # fixed "random" bytes: no format's magic
    assert noise[8:9] != b"{" and noise[0] != 0x80 and not noise.startswith(b"PK")
    return [
        ("empty.safetensors", b"", "the file is empty (0 bytes)"),
        ("empty.pth", b"", "the file is empty (0 bytes)"),
        ("short.safetensors", st[:5], "only 5 bytes"),
        ("cut_header.safetensors", st[:40], "truncated"),
        ("cut_data.safetensors", st[:-8], "truncated"),
        ("bad_json.safetensors", st[:8] + b"{" + b"x" * (len(st) - 9), "not valid JSON"),
        ("noise.safetensors", noise, "does not start with an 8-byte little-endian header length"),
        ("noise.pth", noise, "none of the checkpoint formats"),
        ("text.pth", b"error: 404 not found\n", "a text file, starting 'error: 404 not found'"),
        ("lfs.pth", b"version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 114\n", "Git LFS pointer"),
        ("page.pth", b"<!DOCTYPE html><html><body>Sign in</body></html>", "HTML"),
        ("cut.pth", zipped[: len(zipped) // 2], "zip archive but not a readable torch.save checkpoint"),
        ("cut_legacy.pth", legacy[: len(legacy) // 2], "pickle but not a readable torch.save checkpoint"),
        ("plain_pickle.pth", pickle.dumps(sd, protocol=4), "not written by torch.save"),
    ]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's, for the protocol-4 pickle
@pytest.mark.parametrize("name,data,words", _bad_files(), ids=[f[0] for f in _bad_files()])
def test_bad_files_named_and_explained(tmp_path, name, data, words):
    """Every unreadable file gets a CheckpointError naming the file and the problem in words."""
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(CheckpointError) as info:
        load_weights(ConvNeXt(**SMALL), path)
    msg = str(info.value)
    assert str(path) in msg and words in msg, msg
    assert "would run code" not in msg  # damage is not blamed on code in the file
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        read_checkpoint(str(path))


def test_file_contents_that_do_not_fit_name_the_file(tmp_path):
    sd = timm_convnext(**SMALL).state_dict()
    del sd["stem.1.bias"]
    path = tmp_path / "partial.safetensors"
    path.write_bytes(_safetensors_bytes(sd))
    with pytest.raises(CheckpointError, match="missing keys") as info:
        load_weights(ConvNeXt(**SMALL), path)
    assert str(path) in str(info.value) and "stem.1.bias" in str(info.value)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int8, torch.bool, torch.complex64])
def test_non_float_tensors_refused_not_cast(dtype):
    sd = timm_convnext(**SMALL).state_dict()
    sd["stages.1.blocks.0.mlp.fc1.weight"] = torch.ones(sd["stages.1.blocks.0.mlp.fc1.weight"].shape, dtype=dtype)
    model = ConvNeXt(**SMALL)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for assign in (False, True):
        with pytest.raises(CheckpointError, match=rf"stages\.1\.blocks\.0\.mlp\.fc1\.weight: checkpoint \w+(-point)? "
                                                  rf"{dtype} vs model floating-point torch\.float32"):
            load_weights(model, sd, assign=assign)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing was loaded


def test_non_float_tensor_named_in_checkpoint_and_file_terms(tmp_path):
    """An official-layout file: the error names the file, the model key and the checkpoint's key."""
    sd = timm_to_official(timm_convnext(**SMALL).state_dict())
    sd["downsample_layers.0.0.weight"] = sd["downsample_layers.0.0.weight"].to(torch.int32)
    path = tmp_path / "official.safetensors"
    path.write_bytes(_safetensors_bytes(sd))
    with pytest.raises(CheckpointError) as info:
        load_weights(ConvNeXt(**SMALL), path)
    msg = str(info.value)
    assert str(path) in msg and "torch.int32" in msg, msg
    assert "stem.0.weight (checkpoint key downsample_layers.0.0.weight)" in msg, msg
    # float16 -> float32 is only a change of precision: accepted
    sd["downsample_layers.0.0.weight"] = sd["downsample_layers.0.0.weight"].to(torch.float16)
    assert load_weights(ConvNeXt(**SMALL), sd) == ([], [])
