import json

import pytest

from bgeort.errors import ModelFolderError
from bgeort.manifest import FORMAT_VERSION, MANIFEST_NAME, Manifest, Variant, dump_manifest, load_manifest


def sample_manifest(**changes) -> Manifest:
    fields = dict(
        kind="embedder", name="m", pooling="cls", normalize=True, max_length=512, dim=384,
        query_instruction="Represent this sentence for searching relevant passages: ", passage_instruction="",
        tokenizer_file="tokenizer.json", tokenizer_sha256="0" * 64,
        inputs=("input_ids", "attention_mask", "token_type_ids"), output="last_hidden_state",
        variants={"fp32": Variant(file="model.onnx", sha256="1" * 64, bytes=10, devices=("cpu", "cuda"),
                                  parity={"passed": True, "max_abs_diff": 1e-7})},
        provenance={"source": "BAAI/bge-small-en-v1.5", "revision": None},
    )
    fields.update(changes)
    return Manifest(**fields)


def write_raw(folder, data):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST_NAME).write_text(json.dumps(data))


def test_round_trip(tmp_path):
    manifest = sample_manifest()
    dump_manifest(manifest, tmp_path)
    assert load_manifest(tmp_path) == manifest
    assert json.loads((tmp_path / MANIFEST_NAME).read_text())["format_version"] == FORMAT_VERSION


def test_optional_variant_fields_round_trip_and_are_typed(tmp_path):
    int8 = Variant(file="model_int8.onnx", sha256="2" * 64, bytes=5, devices=("cpu",), parity={"passed": True},
                   weight_bits=8)
    manifest = sample_manifest(variants={"int8": int8})
    dump_manifest(manifest, tmp_path)
    assert load_manifest(tmp_path).variants["int8"].weight_bits == 8
    written = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert "output" not in written["variants"]["int8"]  # unset optional fields are not written
    written["variants"]["int8"]["weight_bits"] = "8"
    write_raw(tmp_path, written)
    with pytest.raises(ModelFolderError, match="weight_bits"):
        load_manifest(tmp_path)


def test_data_file_round_trips_and_is_listed_with_the_graph(tmp_path):
    fp32 = Variant(file="model.onnx", sha256="1" * 64, bytes=10, devices=("cpu",), parity={"passed": True},
                   data_file="model.onnx.data", data_sha256="3" * 64, data_bytes=2_300_000_000)
    dump_manifest(sample_manifest(variants={"fp32": fp32}), tmp_path)
    loaded = load_manifest(tmp_path).variants["fp32"]
    assert loaded == fp32
    assert loaded.files() == [("model.onnx", "1" * 64), ("model.onnx.data", "3" * 64)]


def test_manifest_without_data_files_still_loads(tmp_path):
    # as written before variants could have a data file: no data_* keys at all
    data = sample_manifest().to_dict()
    assert not [key for key in data["variants"]["fp32"] if key.startswith("data_")]
    write_raw(tmp_path, data)
    variant = load_manifest(tmp_path).variants["fp32"]
    assert variant.data_file is None and variant.files() == [("model.onnx", "1" * 64)]


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"data_file": "model.onnx.data"}, r"has \['data_file'\] but not all of"),
        ({"data_file": "../model.onnx.data", "data_sha256": "3" * 64, "data_bytes": 1}, "not a plain file name"),
        ({"data_file": "model.onnx", "data_sha256": "3" * 64, "data_bytes": 1}, "both its graph and its data file"),
        ({"data_file": "model.onnx.data", "data_sha256": "3" * 64, "data_bytes": "1"}, "'data_bytes' is '1'"),
    ],
)
def test_invalid_data_file_entries_are_rejected(tmp_path, fields, message):
    data = sample_manifest().to_dict()
    data["variants"]["fp32"].update(fields)
    write_raw(tmp_path, data)
    with pytest.raises(ModelFolderError, match=message):
        load_manifest(tmp_path)


def test_missing_folder_names_it_and_the_rebuild_command(tmp_path):
    with pytest.raises(ModelFolderError, match=r"does not exist.*make export SOURCE=.* NAME=nothing"):
        load_manifest(tmp_path / "nothing")


def test_missing_manifest(tmp_path):
    with pytest.raises(ModelFolderError, match=r"bgeort.json is missing.*make export"):
        load_manifest(tmp_path)


def test_corrupt_json(tmp_path):
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ModelFolderError, match="not readable JSON.*make export"):
        load_manifest(tmp_path)


def test_newer_format_version_asks_for_an_upgrade_or_rebuild(tmp_path):
    data = sample_manifest().to_dict()
    data["format_version"] = FORMAT_VERSION + 1
    write_raw(tmp_path, data)
    with pytest.raises(ModelFolderError, match=r"newer than this bgeort reads.*pip install -U bgeort.*"
                                               r"make export SOURCE=BAAI/bge-small-en-v1.5"):
        load_manifest(tmp_path)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(extra=1), r"unknown keys \['extra'\]"),
        (lambda d: d.pop("dim"), r"lacks required keys \['dim'\]"),
        (lambda d: d.update(dim=True), "'dim' is True, expected int"),
        (lambda d: d.update(pooling="max"), "'pooling' is 'max'"),
        (lambda d: d.update(kind="classifier"), "'kind' is 'classifier'"),
        (lambda d: d.update(variants={}), "holds no model file"),
        (lambda d: d["variants"].update(bf16=d["variants"]["fp32"]), "unknown precision 'bf16'"),
        (lambda d: d["variants"]["fp32"].update(file="../elsewhere.onnx"), "not a plain file name"),
        (lambda d: d.update(format="something-else"), "'format' is 'something-else'"),
    ],
)
def test_invalid_manifests_are_rejected(tmp_path, change, message):
    data = sample_manifest().to_dict()
    change(data)
    write_raw(tmp_path, data)
    with pytest.raises(ModelFolderError, match=message):
        load_manifest(tmp_path)
