import hashlib
import json
from pathlib import Path

import boto3
import pytest

from llm_assets.objects import LocalObjects, S3Objects
from llm_assets.artifacts import MANIFEST, ArtifactNotFound, Store


def make_dir(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return Store(LocalObjects(tmp_path / "store"), cache_dir=tmp_path / "cache")
    endpoint = request.getfixturevalue("s3_endpoint")
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    bucket = f"b{hashlib.sha1(str(tmp_path).encode()).hexdigest()[:12]}"
    client.create_bucket(Bucket=bucket)
    return Store(S3Objects(f"s3://{bucket}/artifacts", client), cache_dir=tmp_path / "cache")


def test_commit_and_get_round_trip_with_verified_manifest(store, tmp_path):
    src = make_dir(tmp_path / "src", {"model.safetensors": b"w" * 1000, "sub/config.json": b"{}"})
    m = store.commit("models/sft/tiny", src, {"stage": "sft"})
    assert store.latest_version("models/sft/tiny") == m.version
    art = store.get("models/sft/tiny")
    assert art.file("model.safetensors").read_bytes() == b"w" * 1000
    assert (art.path / "sub/config.json").read_bytes() == b"{}"
    manifest = json.loads((art.path / MANIFEST).read_text())
    assert {f["path"] for f in manifest["files"]} == {"model.safetensors", "sub/config.json"}
    assert manifest["files"][0]["sha256"] == hashlib.sha256(b"w" * 1000).hexdigest()
    assert art.manifest.metadata == {"stage": "sft"}


def test_version_is_the_content_hash(store, tmp_path):
    a = store.commit("k/a", make_dir(tmp_path / "a", {"f": b"1"}))
    b = store.commit("k/b", make_dir(tmp_path / "b", {"f": b"1"}))
    c = store.commit("k/a", make_dir(tmp_path / "c", {"f": b"2"}))
    assert a.version == b.version != c.version
    assert store.latest_version("k/a") == c.version
    assert store.get("k/a", a.version).file("f").read_bytes() == b"1"  # older versions stay readable


def test_uncommitted_version_is_invisible(store, tmp_path):
    """A writer killed after uploading files but before the manifest leaves nothing a reader can see."""
    store.objects.write_bytes("k/x/versions/deadbeef/model.bin", b"partial")
    with pytest.raises(ArtifactNotFound, match="nothing has been committed"):
        store.get("k/x")
    with pytest.raises(ArtifactNotFound, match="never committed"):
        store.get("k/x", "deadbeef")


def test_empty_artifact_and_bad_keys_are_refused(store, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty artifact"):
        store.commit("k/e", tmp_path / "empty")
    for key in ("../escape", "a//b", "a/./b", ".hidden"):
        with pytest.raises(ValueError, match="must be"):
            store.commit(key, make_dir(tmp_path / "s", {"f": b"1"}))


def test_local_commit_leaves_no_staging_behind(tmp_path):
    store = Store(LocalObjects(tmp_path / "store"))
    store.commit("k", make_dir(tmp_path / "src", {"f": b"1"}))
    store.commit("k", make_dir(tmp_path / "src", {"f": b"1"}))  # same content twice: idempotent
    assert list((tmp_path / "store" / ".staging").iterdir()) == []
    assert len(list((tmp_path / "store" / "k" / "versions").iterdir())) == 1


def test_s3_download_is_verified_against_the_manifest(s3_endpoint, tmp_path):
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket="verify")
    store = Store(S3Objects("s3://verify/p", client), cache_dir=tmp_path / "cache")
    m = store.commit("k", make_dir(tmp_path / "src", {"f": b"good"}))
    client.put_object(Bucket="verify", Key=f"p/k/versions/{m.version}/f", Body=b"evil")
    with pytest.raises(IOError, match="does not match its manifest"):
        store.get("k")


def test_one_file_is_read_without_fetching_the_rest_and_verified(store, tmp_path):
    src = make_dir(tmp_path / "src", {"model.safetensors": b"w" * 1000, "metrics.json": b'{"eval_loss": 1.5}'})
    m = store.commit("models/sft/tiny", src)
    assert json.loads(store.read_file("models/sft/tiny", "metrics.json")) == {"eval_loss": 1.5}
    assert store.read_file("models/sft/tiny", "absent.json") is None
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("model.safetensors"))  # weights not fetched
    store.objects.write_bytes(f"models/sft/tiny/versions/{m.version}/metrics.json", b'{"eval_loss": 0.1}')
    with pytest.raises(IOError, match="does not match its manifest"):
        store.read_file("models/sft/tiny", "metrics.json")


def test_run_records_live_beside_versions_and_never_change_them(store, tmp_path):
    src = make_dir(tmp_path / "src", {"model.safetensors": b"w" * 100})
    first = store.commit("models/sft/tiny", src)
    store.put_record("models/sft/tiny", "fp1", {"version": first.version, "metrics": {"eval_loss": 1.0}})
    store.put_record("models/sft/tiny", "fp2", {"version": first.version, "metrics": {"eval_loss": 0.5, "tokens_per_s": 9}})
    again = store.commit("models/sft/tiny", src)  # the same files from another run: the same version
    assert again.version == first.version and [f["path"] for f in again.files] == ["model.safetensors"]
    assert store.record("models/sft/tiny")["metrics"]["eval_loss"] == 0.5  # the newest record is current
    assert store.record("models/sft/tiny", "fp1")["metrics"] == {"eval_loss": 1.0}
    assert store.record("models/sft/tiny", "absent") is None and store.record("models/other/tiny") is None
    other = store.commit("models/sft/tiny", make_dir(tmp_path / "src2", {"model.safetensors": b"v" * 100}))
    assert store.latest_version("models/sft/tiny") == other.version
    store.set_latest("models/sft/tiny", first.version)  # a reused result becomes current again
    assert store.latest_version("models/sft/tiny") == first.version and store.has_version("models/sft/tiny", other.version)
    with pytest.raises(ArtifactNotFound):
        store.set_latest("models/sft/tiny", "0" * 64)


def test_a_version_copied_inside_the_store_is_the_same_version_under_another_key(store, tmp_path):
    src = make_dir(tmp_path / "src", {"model.safetensors": b"w" * 1000, "sub/config.json": b"{}"})
    m = store.commit("models/base/tiny", src)
    copied = store.commit_copy("models/cpt/tiny", "models/base/tiny", m.version, {"stage": "cpt"})
    assert copied.version == m.version and store.latest_version("models/cpt/tiny") == m.version
    art = store.get("models/cpt/tiny")
    assert art.file("model.safetensors").read_bytes() == b"w" * 1000 and art.manifest.metadata == {"stage": "cpt"}
    assert store.read_file("models/cpt/tiny", "sub/config.json") == b"{}"  # verified against the manifest


def test_versions_list_committed_ones_and_a_deleted_one_is_gone_before_its_files(store, tmp_path):
    first = store.commit("checkpoints/x", make_dir(tmp_path / "a", {"f": b"1"}), {"step": 1}, latest=False)
    second = store.commit("checkpoints/x", make_dir(tmp_path / "b", {"f": b"2", "g/h": b"3"}), {"step": 2}, latest=False)
    assert [m.metadata["step"] for m in store.versions("checkpoints/x")] == [1, 2] and store.latest_version("checkpoints/x") is None
    store.delete_version("checkpoints/x", first.version)
    assert [m.version for m in store.versions("checkpoints/x")] == [second.version]
    store.delete_key("checkpoints/x")
    assert store.versions("checkpoints/x") == []
