"""`--device`: a name torch cannot parse, a kind nestc does not run on, or a GPU the machine
lacks is a one-screen error (exit 2) from every command that takes it, before anything is
built; "auto" picks the GPU only when torch sees one. (What runs on a GPU is tested in
tests/gpu, on a machine that has one.)"""

from __future__ import annotations

import pytest
import torch

from nestc.diagnostics import NestError
from nestc.runtime.devices import resolve_device

from train_helpers import assert_user_error, nestc_cli, single_thread, trained_transformer  # noqa: F401


def test_auto_is_the_gpu_only_when_there_is_one():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name,needle", [("gpu0", "not a device name"), ("cuda:x", "not a device name"),
                                         ("meta", "CPU or on CUDA"), ("cuda:99", "cuda:99")])
def test_bad_device_names_are_user_errors(name, needle):
    if name == "cuda:99" and not torch.cuda.is_available():
        needle = "no CUDA GPU"
    with pytest.raises(NestError) as e:
        resolve_device(name)
    assert needle in str(e.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_a_gpu_on_a_machine_without_one_is_a_user_error():
    with pytest.raises(NestError) as e:
        resolve_device("cuda")
    assert "torch sees no CUDA GPU here" in str(e.value)


@pytest.mark.parametrize("command", ["train", "bench", "generate", "eval"])
def test_every_command_rejects_a_bad_device_before_it_starts(command, tmp_path):
    target = trained_transformer() / "last.safetensors" if command in ("generate", "eval") else "transformer"
    extra = ["--out", tmp_path / "run"] if command == "train" else []
    r = nestc_cli(command, target, "--device", "gpu0", *extra)
    assert_user_error(r, "--device", "not a device name", "cuda:N")
    assert not (tmp_path / "run").exists()  # nothing built, nothing written
