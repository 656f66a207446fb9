"""A landed file rewritten with the same size and mtime is new content the landing sensor sees (issue 16, item 7)."""

import os

from llm_assets.objects import LocalObjects
from llm_assets_tests.test_landing_sensor import ROW, landing, put, tick  # noqa: F401  (landing is a fixture)


def test_a_rewrite_keeping_size_and_mtime_becomes_a_new_drop(landing):
    path = put(landing, "a.jsonl", ROW)
    first = tick()
    assert [r.partition_key for r in first.run_requests] == ["a.jsonl"]
    st = path.stat()
    path.write_text(ROW.replace('"p"', '"q"'))  # same length, other content
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    second = tick(first.cursor)
    assert [r.partition_key for r in second.run_requests] == [f"a.jsonl@{second.run_requests[0].tags['llm_assets/sha256'][:8]}"]
    assert tick(second.cursor).run_requests == []  # seen once


def test_a_touch_without_new_content_is_not_a_drop(landing):
    path = put(landing, "a.jsonl", ROW)
    first = tick()
    os.chmod(path, 0o600)  # changes the ctime only: hashed again, same content
    assert tick(first.cursor).run_requests == []


def test_the_local_identity_changes_with_any_write(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    objects = LocalObjects(tmp_path)
    before = objects.list()[0]
    st = (tmp_path / "f").stat()
    (tmp_path / "f").write_bytes(b"abd")
    os.utime(tmp_path / "f", ns=(st.st_atime_ns, st.st_mtime_ns))
    after = objects.list()[0]
    assert (after.size, after.mtime) == (before.size, before.mtime) and after.etag != before.etag
