"""The disk spool: durable, ordered, checksummed, bounded, and safe against torn writes."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from nexus.storage.spool import HEADER, Spool, SpoolFullError, read_records


def test_records_come_back_in_order_and_are_removed_after_replay(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    payloads = [f"batch-{i}".encode() * (i + 1) for i in range(5)]
    for p in payloads:
        spool.append(p)
    sent: list[bytes] = []
    assert spool.replay(sent.append) == 5
    assert sent == payloads
    assert spool.pending_files() == [] and spool.size() == 0


def test_failed_replay_keeps_the_rest_for_later(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    for i in range(4):
        spool.append(b"b%d" % i)
    sent: list[bytes] = []

    def flaky(p: bytes) -> None:
        if p == b"b2":
            raise ConnectionError("database went away")
        sent.append(p)

    with pytest.raises(ConnectionError):
        spool.replay(flaky)
    assert sent == [b"b0", b"b1"]
    assert spool.replay(sent.append) == 2
    assert sent == [b"b0", b"b1", b"b2", b"b3"]  # nothing lost, nothing twice, order kept


def test_torn_tail_is_dropped_and_intact_records_survive(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append(b"first")
    spool.append(b"second")
    path = spool.active_path
    data = path.read_bytes()
    path.write_bytes(data + HEADER.pack(b"NXS1", 100, 0) + b"partial")  # a crash mid-append
    assert list(read_records(path)) == [b"first", b"second"]
    corrupt = bytearray(data)
    corrupt[-1] ^= 0xFF  # flip a bit in the last payload
    path.write_bytes(bytes(corrupt))
    assert list(read_records(path)) == [b"first"]


def test_bounded_size(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=100)
    spool.append(b"x" * 50)
    with pytest.raises(SpoolFullError):
        spool.append(b"y" * 50)


def test_unwritable_directory_raises_instead_of_crashing(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the spool directory should be")
    spool = Spool(blocker, max_bytes=1 << 20)
    with pytest.raises(OSError):
        spool.append(b"data")


def test_another_workers_file_is_replayed_once(tmp_path: Path) -> None:
    a = Spool(tmp_path, max_bytes=1 << 20)
    a.append(b"from-a")
    b = Spool(tmp_path, max_bytes=1 << 20)
    got: list[bytes] = []
    assert b.replay(got.append) == 1
    assert a.replay(got.append) == 0
    assert got == [b"from-a"]


def test_several_workers_files_interleaved_each_in_order_all_once(tmp_path: Path) -> None:
    """Workers spool into files of their own; batches interleave in time. Replay keeps each worker's
    order, sends every batch exactly once, and a failure in the middle of the second file resumes there."""
    workers = [Spool(tmp_path, max_bytes=1 << 20) for _ in range(3)]
    for i, spool in enumerate(workers):
        spool._prefix = f"spool-{1000 + i}-1"  # as three processes would name theirs
    written: dict[int, list[bytes]] = {i: [] for i in range(3)}
    for n in range(12):
        who = (n * 7) % 3
        payload = b"w%d-b%d" % (who, n)
        workers[who].append(payload)
        written[who].append(payload)
    sent: list[bytes] = []
    fail_at = written[1][2]

    def flaky(payload: bytes) -> None:
        if payload == fail_at and b"<failed>" not in sent:
            sent.append(b"<failed>")
            raise ConnectionError("database went away")
        sent.append(payload)

    replayer = Spool(tmp_path, max_bytes=1 << 20)
    with pytest.raises(ConnectionError):
        replayer.replay(flaky)
    replayer.replay(flaky)
    delivered = [p for p in sent if p != b"<failed>"]
    assert sorted(delivered) == sorted(p for batch in written.values() for p in batch)  # all, once
    for who, batches in written.items():
        assert [p for p in delivered if p.startswith(b"w%d-" % who)] == batches  # each worker's order
    assert replayer.pending_files() == [] and replayer.size() == 0


def test_frames_are_appended_to_a_private_file(tmp_path: Path) -> None:
    from nexus.storage import frames

    path = tmp_path / "f.bin"
    frames.append(path, b"NXS1", b"payload")
    frames.append(path, b"NXS1", b"more")
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_bytes() == frames.frame(b"NXS1", b"payload") + frames.frame(b"NXS1", b"more")


def test_spool_files_stay_small_enough_to_replay_one_at_a_time(tmp_path: Path) -> None:
    """A replay reads one file into memory: a long slow-database spell spools into many bounded files,
    not one that grows to the whole spool (hundreds of MB held at once by the replay), and they replay
    in the order they were written."""
    spool = Spool(tmp_path / "spool", 1 << 20, file_max_bytes=300)
    for n in range(10):
        spool.append(b"%03d" % n + b"x" * 97)
    files = spool.pending_files()
    assert len(files) == 5 and all(p.stat().st_size <= 300 for p in files)
    sent: list[bytes] = []
    assert spool.replay(sent.append) == 10
    assert [p[:3] for p in sent] == [b"%03d" % n for n in range(10)]


def test_the_size_is_not_summed_for_every_append(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer that spools every batch (its database slower than the traffic) listed and stat'ed the
    spool directory for each append; the size is summed at most once a second, this process's appends
    added in between, and summed again after a replay removed files."""
    spool = Spool(tmp_path / "spool", 1 << 20)
    listings = 0
    real_glob = Path.glob

    def counting_glob(self: Path, pattern: str) -> Any:
        nonlocal listings
        listings += pattern == "spool-*"
        return real_glob(self, pattern)

    monkeypatch.setattr(Path, "glob", counting_glob)
    for n in range(50):
        spool.append(b"batch %d" % n)
    assert listings <= 2
    assert spool.size() == sum(p.stat().st_size for p in real_glob(tmp_path / "spool", "spool-*"))
    assert spool.replay(lambda _: None) == 50
    assert spool.size() == 0


def test_a_record_appended_in_parts_is_written_as_the_joined_record(tmp_path: Path) -> None:
    """The writer hands a batch to the spool as its parts (frame header, two COPY payloads), which are
    written without being joined in memory first: the file holds exactly the joined record."""
    from nexus.storage import frames

    spool = Spool(tmp_path / "spool", 1 << 20)
    spool.append([b"head", b"", b"requests" * 100, b"blobs"])
    spool.append(b"whole")
    (path,) = spool.pending_files()
    assert path.read_bytes() == frames.frame(b"NXS1", b"head" + b"requests" * 100 + b"blobs") + frames.frame(
        b"NXS1", b"whole"
    )
    assert list(read_records(path)) == [b"head" + b"requests" * 100 + b"blobs", b"whole"]
    assert spool.size() == path.stat().st_size


# --- several workers on one spool directory (PROXY_WORKERS > 1) ----------------------------------


def spool_of_workers(directory: Path, batches: int) -> list[bytes]:
    """`batches` batches spooled by three workers, in files of a few batches each; the payloads."""
    workers = [Spool(directory, max_bytes=1 << 20, file_max_bytes=100) for _ in range(3)]
    for i, spool in enumerate(workers):
        spool._prefix = f"spool-{2000 + i}-1"  # as three processes would name theirs
    payloads = [b"batch-%03d" % n + b"x" * 20 for n in range(batches)]
    for n, payload in enumerate(payloads):
        workers[n % 3].append(payload)
    return payloads


def test_two_workers_replaying_one_spool_at_once_send_every_batch_once(tmp_path: Path) -> None:
    """Two workers replay the same directory at once: a file the first one claimed and is sending is
    not the second one's (it used to take any claimed file for one left by a crash: it sent the first
    one's batches again, and read or stat'ed files the first one had just removed: FileNotFoundError)."""
    payloads = spool_of_workers(tmp_path, 30)
    sent: list[bytes] = []
    errors: list[BaseException] = []
    first_sending = threading.Event()

    def slow(payload: bytes) -> None:
        first_sending.set()
        time.sleep(0.01)
        sent.append(payload)

    def replay(spool: Spool) -> None:
        try:
            spool.replay(slow)
        except BaseException as exc:  # reported by the assert below
            errors.append(exc)

    first = threading.Thread(target=replay, args=(Spool(tmp_path, 1 << 20),))
    first.start()
    assert first_sending.wait(5)
    second = threading.Thread(target=replay, args=(Spool(tmp_path, 1 << 20),))
    second.start()
    first.join(30)
    second.join(30)
    assert errors == []
    Spool(tmp_path, 1 << 20).replay(sent.append)  # what either skipped (claimed by the other meanwhile)
    assert sorted(sent) == payloads  # every batch, each once
    assert Spool(tmp_path, 1 << 20).pending_files() == []


def test_a_batch_appended_while_another_worker_claims_the_file_is_not_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker appends to its spool file while another worker claims that file to replay it: the
    append must not land in a file already read and about to be removed (it was acknowledged as kept)."""
    from nexus.storage import frames

    owner = Spool(tmp_path, 1 << 20)
    owner.append(b"first")
    appending, go_on = threading.Event(), threading.Event()
    real_write = frames.write

    def paused_write(fd: int, magic: bytes, payload: bytes) -> None:
        if payload == b"second":  # the file is open for this append: pause the append there
            appending.set()
            go_on.wait(5)
        real_write(fd, magic, payload)

    monkeypatch.setattr(frames, "write", paused_write)
    appender = threading.Thread(target=owner.append, args=(b"second",))
    appender.start()
    try:
        assert appending.wait(5)
        sent: list[bytes] = []
        Spool(tmp_path, 1 << 20).replay(sent.append)  # another worker, while the append is under way
    finally:
        go_on.set()
        appender.join(10)
    Spool(tmp_path, 1 << 20).replay(sent.append)
    assert sorted(sent) == [b"first", b"second"]
    assert Spool(tmp_path, 1 << 20).pending_files() == []


def test_files_that_vanish_while_listed_are_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another worker removes a file between the listing and its stat: not an error, and the size and
    the oldest file's age are still those of the files that remain."""
    spool = Spool(tmp_path, 1 << 20)
    spool.append(b"stays")
    gone = tmp_path / "spool-9999-1-000000.log"
    gone.write_bytes(b"x")
    real_glob = Path.glob

    def glob_then_remove(self: Path, pattern: str) -> Any:
        found = list(real_glob(self, pattern))
        gone.unlink(missing_ok=True)  # removed by another worker just after the listing
        return iter(found)

    monkeypatch.setattr(Path, "glob", glob_then_remove)
    assert spool.pending_files() == [spool.active_path]
    gone.write_bytes(b"x")
    spool._sized = None
    assert spool.size() == spool.active_path.stat().st_size
    gone.write_bytes(b"x")
    assert spool.oldest_mtime() == spool.active_path.stat().st_mtime


def test_a_new_file_of_the_same_name_never_replaces_a_claimed_one(tmp_path: Path) -> None:
    """A replay stops part-way (the database went away) and leaves its claimed file; the worker spools
    on into a new file of the same name; another worker is replaying the claimed file when this one
    claims the new file. The new claim must not take the claimed file's name (a rename replaces it:
    its batches were lost)."""
    import fcntl

    owner = Spool(tmp_path, 1 << 20)
    owner.append(b"a")
    owner.append(b"b")
    replayer = Spool(tmp_path, 1 << 20)
    sent: list[bytes] = []

    def away_at_b(payload: bytes) -> None:
        if payload == b"b":
            raise ConnectionError("database went away")
        sent.append(payload)

    with pytest.raises(ConnectionError):
        replayer.replay(away_at_b)
    (left,) = replayer.pending_files()
    owner.append(b"c")  # a new file, the name the first one had before it was claimed
    other = open(left, "rb")
    try:
        fcntl.flock(other.fileno(), fcntl.LOCK_EX)
        replayer.replay(sent.append)
    finally:
        other.close()
    replayer.replay(sent.append)
    assert sorted(sent) == [b"a", b"b", b"c"]
    assert replayer.pending_files() == []
