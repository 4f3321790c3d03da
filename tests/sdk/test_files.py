"""files.* through the real Python SDK."""

import hashlib
import os

import pytest
from e2b import FileType, NotFoundException
from e2b.sandbox.filesystem.filesystem import WriteEntry
from paddock_testing import wait_until


def test_text_and_bytes_round_trip(sbx):
    sbx.files.write("/home/user/t.txt", "héllo")
    assert sbx.files.read("/home/user/t.txt") == "héllo"
    blob = bytes(range(256)) * 4
    sbx.files.write("/home/user/b.bin", blob)
    assert bytes(sbx.files.read("/home/user/b.bin", format="bytes")) == blob


def test_write_creates_parents_owned_by_the_user(sbx):
    info = sbx.files.write("/home/user/deep/er/x.txt", "x")
    assert info.path == "/home/user/deep/er/x.txt"
    assert sbx.files.get_info("/home/user/deep").owner == "user"
    assert sbx.files.get_info("/home/user/deep/er/x.txt").owner == "user"


def test_relative_paths_resolve_under_home(sbx):
    sbx.files.write("rel.txt", "r")
    assert sbx.files.read("/home/user/rel.txt") == "r"


def test_twenty_mib_round_trip_with_checksum(sbx):
    data = os.urandom(20 * 1024 * 1024)
    sbx.files.write("/tmp/big.bin", data)
    back = bytes(sbx.files.read("/tmp/big.bin", format="bytes"))
    assert hashlib.sha256(back).hexdigest() == hashlib.sha256(data).hexdigest()
    out = sbx.commands.run("sha256sum /tmp/big.bin").stdout.split()[0]
    assert out == hashlib.sha256(data).hexdigest()


def test_octet_stream_and_gzip_uploads(sbx):
    sbx.files.write("/tmp/oct.txt", "octet", use_octet_stream=True)
    assert sbx.files.read("/tmp/oct.txt") == "octet"
    sbx.files.write("/tmp/gz.txt", "zipped" * 1000, gzip=True)
    assert sbx.files.read("/tmp/gz.txt") == "zipped" * 1000


def test_metadata_on_write(sbx):
    sbx.files.write("/home/user/m.txt", "m", metadata={"owner": "agent-7"})
    assert sbx.files.get_info("/home/user/m.txt").metadata == {"owner": "agent-7"}


def test_write_files(sbx):
    infos = sbx.files.write_files(
        [WriteEntry(path="/home/user/w/a.txt", data="A"), WriteEntry(path="/home/user/w/b.txt", data=b"B")]
    )
    assert sorted(i.path for i in infos) == ["/home/user/w/a.txt", "/home/user/w/b.txt"]
    assert sbx.files.read("/home/user/w/a.txt") == "A"
    assert sbx.files.read("/home/user/w/b.txt") == "B"


def test_list_with_depth(sbx):
    sbx.files.make_dir("/tmp/tree/a/b")
    sbx.files.write("/tmp/tree/a/b/f.txt", "f")
    sbx.files.write("/tmp/tree/top.txt", "t")
    names1 = sorted(e.path for e in sbx.files.list("/tmp/tree"))
    assert names1 == ["/tmp/tree/a", "/tmp/tree/top.txt"]
    names3 = sorted(e.path for e in sbx.files.list("/tmp/tree", depth=3))
    assert names3 == ["/tmp/tree/a", "/tmp/tree/a/b", "/tmp/tree/a/b/f.txt", "/tmp/tree/top.txt"]
    types = {e.name: e.type for e in sbx.files.list("/tmp/tree", depth=3)}
    assert types["a"] == FileType.DIR and types["top.txt"] == FileType.FILE


def test_exists_get_info_make_dir(sbx):
    assert sbx.files.exists("/nope/nothing") is False
    assert sbx.files.make_dir("/tmp/md") is True
    assert sbx.files.make_dir("/tmp/md") is False, "an existing directory is reported, not an error"
    info = sbx.files.get_info("/tmp/md")
    assert info.type == FileType.DIR and info.name == "md"
    assert sbx.files.exists("/tmp/md")


def test_rename_and_remove(sbx):
    sbx.files.write("/tmp/r1.txt", "move me")
    moved = sbx.files.rename("/tmp/r1.txt", "/tmp/sub/r2.txt")
    assert moved.path == "/tmp/sub/r2.txt"
    assert not sbx.files.exists("/tmp/r1.txt")
    assert sbx.files.read("/tmp/sub/r2.txt") == "move me"
    sbx.files.remove("/tmp/sub")
    assert not sbx.files.exists("/tmp/sub")


def test_not_found_errors(sbx):
    with pytest.raises(NotFoundException):
        sbx.files.read("/no/such/file")
    with pytest.raises(NotFoundException):
        sbx.files.get_info("/no/such/file")
    with pytest.raises(NotFoundException):
        sbx.files.list("/no/such/dir")
    with pytest.raises(NotFoundException):
        sbx.files.rename("/no/such/file", "/tmp/x")


def test_permissions_follow_the_user(sbx):
    sbx.commands.run("echo secret > /root/secret.txt && chmod 600 /root/secret.txt", user="root")
    with pytest.raises(Exception) as exc:
        sbx.files.read("/root/secret.txt")
    assert "permission" in str(exc.value).lower() or "403" in str(exc.value)
    assert sbx.files.read("/root/secret.txt", user="root") == "secret\n"


def test_writes_where_the_user_may_not_are_handed_over(sbx):
    # envd writes as root and hands what it creates to the user: SDK code writes to
    # /app/config.json as the default user. (Under /tmp here: this runtime shares the host's /.)
    sbx.commands.run(
        "mkdir -p /tmp/rootonly && chmod 755 /tmp/rootonly"
        " && echo keep > /tmp/rootonly/owned && chmod 644 /tmp/rootonly/owned",
        user="root",
    )
    sbx.files.write("/tmp/rootonly/app/conf/config.json", "{}")
    assert sbx.files.read("/tmp/rootonly/app/conf/config.json") == "{}"
    assert sbx.files.get_info("/tmp/rootonly/app").owner == "user"
    assert sbx.files.get_info("/tmp/rootonly/app/conf").owner == "user"
    assert sbx.files.get_info("/tmp/rootonly/app/conf/config.json").owner == "user"
    # An existing file of someone else's gets the content, not a new owner.
    sbx.files.write("/tmp/rootonly/owned", "replaced")
    assert sbx.files.read("/tmp/rootonly/owned") == "replaced"
    assert sbx.files.get_info("/tmp/rootonly/owned").owner == "root"


def test_remove_of_a_missing_path_succeeds(sbx):
    sbx.files.remove("/tmp/never-existed")
    sbx.files.remove("/tmp/never/existed/either")
    assert not sbx.files.exists("/tmp/never-existed")


def test_a_write_without_metadata_clears_it(sbx):
    sbx.files.write("/home/user/md.txt", "1", metadata={"a": "1", "b": "2"})
    sbx.files.write("/home/user/md.txt", "2", metadata={"b": "3"})
    assert sbx.files.get_info("/home/user/md.txt").metadata == {"b": "3"}
    sbx.files.write("/home/user/md.txt", "3")
    assert not sbx.files.get_info("/home/user/md.txt").metadata


def test_watch_dir_events(sbx):
    sbx.files.make_dir("/tmp/watched")
    handle = sbx.files.watch_dir("/tmp/watched", include_entry=True)
    try:
        sbx.files.write("/tmp/watched/new.txt", "1")
        sbx.files.remove("/tmp/watched/new.txt")
        kinds = set()

        def both_seen():
            kinds.update((e.name, e.type.name) for e in handle.get_new_events())
            return {("new.txt", "CREATE"), ("new.txt", "REMOVE")} <= kinds

        wait_until(both_seen, 10, "CREATE and REMOVE events of new.txt", interval=0.1)
    finally:
        handle.stop()


def test_a_write_makes_the_events_envd_makes(sbx):
    # envd: create, then an attribute change (its handover to the user), then the write.
    sbx.files.make_dir("/tmp/watched3")
    handle = sbx.files.watch_dir("/tmp/watched3")
    try:
        sbx.files.write("/tmp/watched3/f.txt", "data")
        seen = []

        def three_seen():
            seen.extend(e.type.name for e in handle.get_new_events() if e.name == "f.txt")
            return len(seen) >= 3

        wait_until(three_seen, 10, "three events of f.txt", interval=0.1)
        assert seen[:3] == ["CREATE", "CHMOD", "WRITE"], seen
    finally:
        handle.stop()


def test_recursive_watch_names_nested_paths_and_follows_new_directories(sbx):
    sbx.files.make_dir("/tmp/wr/old/deep")
    handle = sbx.files.watch_dir("/tmp/wr", recursive=True)
    try:
        seen = set()

        def saw(*wanted):
            seen.update((e.name, e.type.name) for e in handle.get_new_events())
            return set(wanted) <= seen

        # A directory that existed when the watch started, two levels down.
        sbx.files.write("/tmp/wr/old/deep/a.txt", "a")
        wait_until(lambda: saw(("old/deep/a.txt", "CREATE"), ("old/deep/a.txt", "WRITE")), 10,
                   "events of old/deep/a.txt", interval=0.1)
        # Directories made after the watch started, by the SDK and by a command (mkdir -p
        # makes the whole chain at once), are watched too.
        sbx.files.make_dir("/tmp/wr/new")
        sbx.commands.run("mkdir -p /tmp/wr/x/y/z")
        wait_until(lambda: saw(("new", "CREATE"), ("x", "CREATE")), 10, "the new directories", interval=0.1)
        sbx.files.write("/tmp/wr/new/b.txt", "b")
        sbx.commands.run("echo c > /tmp/wr/x/y/z/c.txt && rm /tmp/wr/old/deep/a.txt")
        # c.txt may be made before x/y/z is watched: it is then reported as created when the
        # watch finds it. Once reported, its directory is watched, so writes are seen.
        wait_until(lambda: saw(("new/b.txt", "CREATE"), ("x/y/z/c.txt", "CREATE"), ("old/deep/a.txt", "REMOVE")),
                   10, "events in the new directories", interval=0.1)
        sbx.commands.run("echo more >> /tmp/wr/x/y/z/c.txt")
        wait_until(lambda: saw(("x/y/z/c.txt", "WRITE")), 10, "the write to x/y/z/c.txt", interval=0.1)
        assert all(not name.startswith("/") for name, _ in seen), seen
    finally:
        handle.stop()


def test_watch_dir_on_missing_path(sbx):
    with pytest.raises(NotFoundException):
        sbx.files.watch_dir("/tmp/never-created")
