"""bench/gpu.py's packing: what travels to the GPU machine in parts comes back whole."""

import io
import tarfile

import bench.gpu as gpu


def test_pack_splits_the_payload_and_the_wheel_into_parts_that_rejoin(tmp_path, monkeypatch):
    payload = tmp_path / "payload"
    (payload / "models" / "m").mkdir(parents=True)
    files = {"models/m/model_fp16.onnx": bytes(range(256)) * 40, "info.json": b'{"a": 1}'}
    for name, data in files.items():
        (payload / name).write_bytes(data)
    wheel = tmp_path / "onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl"
    wheel.write_bytes(b"wheel bytes" * 500)
    monkeypatch.setattr(gpu, "PART_BYTES", 4096)
    parts = tmp_path / "parts"
    gpu.pack(payload, parts, [wheel])
    pieces = sorted(parts.glob("p*/payload.tar.*"), key=lambda p: int(p.parent.name[1:]))
    assert len(pieces) > 3 and all(p.stat().st_size <= 4096 for p in pieces)
    assert [len(list(folder.iterdir())) for folder in sorted(parts.iterdir())] == [1] * len(pieces)  # one per call
    joined = b"".join(p.read_bytes() for p in pieces)  # cat /tmp/w/payload.tar.* | tar -x
    with tarfile.open(fileobj=io.BytesIO(joined)) as tar:
        got = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    assert got == {**{f"payload/{name}": data for name, data in files.items()},
                   f"payload/wheel/{wheel.name}": wheel.read_bytes()}
