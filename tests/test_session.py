import os

import pytest

from bgeort.errors import DeviceError, MissingDependencyError
from bgeort.session import (CPU, CUDA, check_ort_install, choose_providers, exact_int8_kernels_needed,
                            installed_ort_distributions, parse_device, session_options)

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


def test_both_onnxruntime_wheels_in_one_directory_is_an_error_with_the_fix():
    check_ort_install({"onnxruntime": ["/venv/site"]})
    check_ort_install({"onnxruntime-gpu": ["/venv/site"]})
    # in separate directories nothing was overwritten: the first on sys.path is imported whole
    check_ort_install({"onnxruntime": ["/usr/lib/site"], "onnxruntime-gpu": ["/tmp/site"]})
    with pytest.raises(MissingDependencyError, match="installed in /venv/site.*pip uninstall -y onnxruntime onnxruntime-gpu"):
        check_ort_install({"onnxruntime": ["/usr/lib/site", "/venv/site"], "onnxruntime-gpu": ["/venv/site"]})


def _fake_wheel(site, name, version):
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def test_installed_wheels_are_found_per_site_directory(tmp_path, monkeypatch):
    first, second = tmp_path / "first", tmp_path / "second"
    _fake_wheel(first, "onnxruntime-gpu", "1.31.1")
    _fake_wheel(second, "onnxruntime", "1.30.0")
    monkeypatch.syspath_prepend(str(second))
    monkeypatch.syspath_prepend(str(first))
    found = installed_ort_distributions()
    assert found["onnxruntime-gpu"][0] == os.path.realpath(first)
    assert os.path.realpath(second) in found["onnxruntime"]
    check_ort_install(found)  # the .venv's own onnxruntime, if any, is elsewhere too
    _fake_wheel(first, "onnxruntime", "1.30.0")  # now one directory holds both: the broken mix
    with pytest.raises(MissingDependencyError, match=str(first)):
        check_ort_install(installed_ort_distributions())


AVX2_ONLY = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse4_1 avx avx2 fma f16c\n"
VNNI = "processor\t: 0\nflags\t\t: fpu avx avx2 fma avx512f avx512_vnni\n"
AVX_VNNI = "processor\t: 0\nflags\t\t: fpu avx avx2 fma avx_vnni\n"


@pytest.mark.parametrize("machine, cpuinfo, expected", [
    ("x86_64", AVX2_ONLY, True),  # u8*s8 pairs saturate in 16 bits: exact kernels
    ("x86_64", VNNI, False),
    ("x86_64", AVX_VNNI, False),
    ("AMD64", None, True),  # no /proc/cpuinfo (Windows): assume the worst
    ("x86_64", "processor\t: 0\n", True),  # no flags line
    ("aarch64", None, False),  # the x86 saturation does not exist there
    ("arm64", AVX2_ONLY, False),
])
def test_exact_int8_kernels_table(machine, cpuinfo, expected):
    assert exact_int8_kernels_needed(machine, cpuinfo) is expected


def test_exact_int8_sets_the_onnxruntime_option():
    import onnxruntime as ort

    key = "session.x64quantprecision"
    assert session_options(ort, threads=1, spinning=True, exact_int8=True).get_session_config_entry(key) == "1"
    off = session_options(ort, threads=1, spinning=True, exact_int8=False)
    assert not off.enable_mem_pattern
    assert session_options(ort, threads=1, spinning=True, exact_int8=False, cpu=False).enable_mem_pattern
    with pytest.raises(RuntimeError, match="does not have configuration"):
        off.get_session_config_entry(key)


def test_cpu_sessions_keep_the_ffn_bias_add_and_gelu_apart(tmp_path, monkeypatch):
    """onnxruntime would fuse the bias Add and the GELU into BiasGelu, slower on CPU than the two
    (bgeort/session.py); the session bgeort opens must run Add + Gelu, with the same numbers."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    import bgeort.session as session_module

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Add", ["x", "bias"], ["h"]),
             helper.make_node("Div", ["h", "sqrt2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["f"]), helper.make_node("Mul", ["h", "f"], ["g"]),
             helper.make_node("Mul", ["g", "half"], ["y"])]
    constants = [numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "bias"),
                 numpy_helper.from_array(np.array(2 ** 0.5, np.float32), "sqrt2"),
                 numpy_helper.from_array(np.array(1.0, np.float32), "one"),
                 numpy_helper.from_array(np.array(0.5, np.float32), "half")]
    graph = helper.make_graph(nodes, "gelu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], constants)
    model_file = tmp_path / "gelu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model_file)

    written = []
    real_options = session_module.session_options

    def options_writing_the_optimized_graph(*args, **kwargs):
        options = real_options(*args, **kwargs)
        options.optimized_model_filepath = str(tmp_path / f"optimized{len(written)}.onnx")
        written.append(options.optimized_model_filepath)
        return options

    monkeypatch.setattr(session_module, "session_options", options_writing_the_optimized_graph)
    session = session_module.open_session(str(model_file), choose_providers("cpu", [CPU])[0], threads=1)
    ops = [node.op_type for node in onnx.load(written[0]).graph.node]
    assert "BiasGelu" not in ops and "Gelu" in ops, ops

    fused = ort.InferenceSession(str(model_file), providers=[CPU])  # onnxruntime's default: BiasGelu
    x = rng.standard_normal((2, 3, 16)).astype(np.float32)
    ours = session.run(None, {"x": x})[0]
    np.testing.assert_allclose(ours, fused.run(None, {"x": x})[0], rtol=1e-6, atol=1e-6)
    # and both are the exact (erf) GELU of x + bias, computed here in float64
    import math

    h = x.astype(np.float64) + numpy_helper.to_array(constants[0])
    exact = 0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))
    np.testing.assert_allclose(ours, exact, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spinning,allow,stop", [(True, None, None), ("runs", None, "1"), (False, "0", None)])
def test_spinning_modes_set_the_onnxruntime_options(spinning, allow, stop):
    import onnxruntime as ort

    options = session_options(ort, threads=2, spinning=spinning)
    for key, want in (("session.intra_op.allow_spinning", allow), ("session.force_spinning_stop", stop)):
        if want is None:
            with pytest.raises(RuntimeError, match="does not have configuration"):
                options.get_session_config_entry(key)
        else:
            assert options.get_session_config_entry(key) == want
