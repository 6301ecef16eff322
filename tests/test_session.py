import pytest

from bgeort.errors import DeviceError, MissingDependencyError
from bgeort.session import CPU, CUDA, check_ort_install, choose_providers, parse_device

WITH_CUDA = ["TensorrtExecutionProvider", CUDA, CPU]
CPU_ONLY = ["AzureExecutionProvider", CPU]


@pytest.mark.parametrize(
    "device, available, expected",
    [
        ("cpu", WITH_CUDA, [("cpu", [CPU])]),
        ("cpu", CPU_ONLY, [("cpu", [CPU])]),
        ("auto", CPU_ONLY, [("cpu", [CPU])]),
        ("auto", WITH_CUDA, [("cuda:0", [(CUDA, {"device_id": 0}), CPU]), ("cpu", [CPU])]),
        ("cuda", WITH_CUDA, [("cuda:0", [(CUDA, {"device_id": 0}), CPU])]),
        ("CUDA:1", WITH_CUDA, [("cuda:1", [(CUDA, {"device_id": 1}), CPU])]),
    ],
)
def test_choose_providers_table(device, available, expected):
    choices = choose_providers(device, available)
    assert [(c.device, c.providers) for c in choices] == expected


@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_explicit_cuda_without_cuda_provider_is_an_error(device):
    with pytest.raises(DeviceError, match="no CUDA provider.*bgeort\\[gpu\\]"):
        choose_providers(device, CPU_ONLY)


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "", "cuda:-1"])
def test_unknown_device_names(device):
    with pytest.raises(ValueError, match="unknown device"):
        parse_device(device)


def test_both_onnxruntime_wheels_is_an_error_with_the_fix():
    check_ort_install(["onnxruntime"])
    check_ort_install(["onnxruntime-gpu"])
    with pytest.raises(MissingDependencyError, match="pip uninstall -y onnxruntime onnxruntime-gpu"):
        check_ort_install(["onnxruntime", "onnxruntime-gpu"])
