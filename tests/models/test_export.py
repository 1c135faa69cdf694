"""Encoder hand-off: export → load round trip, metadata checks, corrupt and foreign files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from pimpic.errors import PimpicError
from pimpic.models.export import load_encoder, read_encoder_metadata, save_encoder
from pimpic.models.unet import Encoder
from pimpic.pretraining.backbones import build_encoder

META = {"patch_size": 16, "spacing": [1.5, 1.5, 1.5], "window": [-200.0, 400.0],
        "method": "pimpic", "steps": 7, "pretrain_cases": ["a", "b"]}
SETUP = {"in_channels": 1, "width": 4, "depth": 3, "patch_size": 16,
         "spacing": (1.5, 1.5, 1.5), "window": (-200, 400)}


@pytest.fixture
def exported(tmp_path):
    torch.manual_seed(0)
    enc = Encoder(1, 4, 3)
    path = tmp_path / "encoder.safetensors"
    save_encoder(path, enc, META)
    return enc, path


def test_round_trip_identical_weights_and_metadata(exported):
    enc, path = exported
    loaded, meta = load_encoder(path, build_encoder, expected=SETUP)
    for (k, a), (k2, b) in zip(enc.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)
    assert meta["architecture"] == enc.architecture()
    assert meta["pretrain_cases"] == ["a", "b"] and meta["steps"] == 7
    x = torch.randn(1, 1, 16, 16, 16)
    assert all(torch.equal(p, q) for p, q in zip(enc(x), loaded(x), strict=True))


def test_plain_safetensors_load_without_pimpic_code(exported):
    enc, path = exported
    state = load_file(str(path))
    plain = Encoder(1, 4, 3)  # any module with the same keys; strict load
    plain.load_state_dict(state, strict=True)
    assert set(state) == set(enc.state_dict())


def test_mismatch_lists_every_difference_and_allow_accepts(exported):
    _, path = exported
    setup = {**SETUP, "spacing": (1.0, 1.0, 1.0), "patch_size": 32}
    with pytest.raises(PimpicError) as err:
        load_encoder(path, build_encoder, expected=setup)
    msg = str(err.value)
    assert "spacing" in msg and "patch_size" in msg and "\n" not in msg
    with pytest.raises(PimpicError, match="spacing"):
        load_encoder(path, build_encoder, expected=setup, allow=["patch_size"])
    load_encoder(path, build_encoder, expected=setup, allow=["patch_size", "spacing"])
    with pytest.raises(PimpicError, match="--allow"):
        load_encoder(path, build_encoder, expected=SETUP, allow=["colour"])


def test_corrupt_and_foreign_files_raise(tmp_path, exported):
    _, path = exported
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01not a safetensors file" * 10)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    for bad in (truncated, garbage, foreign, tmp_path / "missing.safetensors"):
        with pytest.raises(PimpicError):
            load_encoder(bad, build_encoder, expected=SETUP)
    with pytest.raises(PimpicError, match="not a pimpic encoder"):
        read_encoder_metadata(foreign)


def test_missing_tensor_key_is_an_error(tmp_path, exported):
    enc, _ = exported
    state = {k: v for k, v in enc.state_dict().items() if not k.startswith("blocks.2.")}
    header = {"format": "pimpic-encoder",
              "pimpic": json.dumps({"architecture": enc.architecture(), **META})}
    bad = tmp_path / "partial.safetensors"
    save_file(state, str(bad), metadata=header)
    with pytest.raises(PimpicError, match="missing"):
        load_encoder(bad, build_encoder, expected=SETUP)


@pytest.mark.parametrize("arch", [
    {"width": 10**9},  # overflows even the shape arithmetic
    {"width": 100_000},  # would allocate terabytes before today's shape check
    {"depth": 10**6},  # a module per level, a million times
    {"in_channels": 0},
    {"width": "4"},
])
def test_absurd_declared_architecture_is_refused_before_allocation(tmp_path, exported, arch):
    _, path = exported
    meta = read_encoder_metadata(path)
    meta["architecture"] = {**meta["architecture"], **arch}
    bad = tmp_path / "absurd.safetensors"
    save_file(load_file(str(path)), str(bad),
              metadata={"format": "pimpic-encoder", "pimpic": json.dumps(meta)})
    with pytest.raises(PimpicError) as err:
        load_encoder(bad, build_encoder)
    assert str(err.value).startswith(str(bad)) and "\n" not in str(err.value)


def test_shapes_that_do_not_fit_the_declared_width_are_named(tmp_path, exported):
    enc, _ = exported
    other = Encoder(1, 2, 3)  # same keys, half the width
    header = {"format": "pimpic-encoder",
              "pimpic": json.dumps({"architecture": enc.architecture(), **META})}
    bad = tmp_path / "narrow.safetensors"
    save_file(other.state_dict(), str(bad), metadata=header)
    with pytest.raises(PimpicError, match=r"tensor shapes differ .*width 4, depth 3"):
        load_encoder(bad, build_encoder, expected=SETUP)
