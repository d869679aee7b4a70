"""Readers never raise on a bad cell; verify() says what cannot be trusted, in one line."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest
import synth

from rllmtop.events import RequestStatus, SessionState
from rllmtop.record.reader import open_recording
from rllmtop.record.rebuild import request_events
from rllmtop.record.writer import Recorder


@pytest.fixture
def path(tmp_path: Path) -> Path:
    p = tmp_path / "r.db"
    rng = random.Random(8)
    rec = Recorder(p, synth.info())
    for i in range(10):
        rec.handle(synth.scrape(i * 0.25, i))
    for i in range(12):
        for ev in request_events(synth.record(i, 0.1 * i, rng)):
            rec.handle(ev)
    rec.close(SessionState.DONE)
    return p


def edit(p: Path, *sql: str) -> None:
    db = sqlite3.connect(p)
    for s in sql:
        db.execute(s)
    db.commit()
    db.close()


def read_all(p: Path) -> tuple[list[str], str, bool]:
    with open_recording(p) as r:
        r.requests()
        r.scrapes(full=True)
        r.samples()
        r.histograms()
        r.states()
        r.logs()
        _ = r.info
        list(r.stream())
        rep = r.verify()
        assert "\n" not in rep.summary
        return list(r.problems), rep.summary, rep.ok


def test_a_whole_file_verifies(path: Path) -> None:
    problems, summary, ok = read_all(path)
    assert ok and problems == [] and summary.endswith("rows check out")


def test_a_status_not_in_the_enum(path: Path) -> None:
    """Before: RequestStatus('exploded') raised ValueError in every reader."""
    edit(path, "UPDATE requests SET status = 'exploded' WHERE rid = 2")
    with open_recording(path) as r:
        bad = r.requests()[2]
        assert bad.status is RequestStatus.ERROR and r.problems == ("requests: request 2: unreadable status",)
    _, summary, ok = read_all(path)
    assert not ok and summary.startswith("1 of 12 requests rows fail their checks")


def test_labels_that_are_not_json(path: Path) -> None:
    """Before: json.loads raised at open."""
    edit(path, "UPDATE series SET labels = 'engine=0' WHERE id = 1")
    problems, summary, ok = read_all(path)
    assert not ok and any("labels are not JSON" in p for p in problems) and "series rows" in summary


def test_text_in_a_numeric_metadata_field(path: Path) -> None:
    """Before: float('yesterday') raised in Recording.info."""
    edit(path, "UPDATE metadata SET value = 'yesterday' WHERE key = 'started_at'")
    with open_recording(path) as r:
        assert r.info.started_at == 0.0 and "started_at" in r.problems[0]
    _, summary, ok = read_all(path)
    assert not ok and "metadata rows" in summary


def test_a_dropped_table(path: Path) -> None:
    """Before: "no such table: events" raised in states(), logs() and replay."""
    edit(path, "DROP TABLE events")
    with open_recording(path) as r:
        assert r.states() == [] and r.logs() == [] and len(r.requests()) == 12
        assert r.problems == ("events: the table is missing",)
        rep = r.verify()
        assert not rep.ok and rep.missing == ("events",) and rep.summary.startswith("missing: events")


def test_a_bad_gap_blob(path: Path) -> None:
    edit(path, "UPDATE request_gaps SET gaps = x'0102' WHERE rid = 5")
    with open_recording(path) as r:
        q = r.requests()[5]
        assert q.gaps == b"" and "gaps" in r.problems[0]
        assert len([e for e in r.stream() if getattr(e, "rid", None) == 5]) >= 2  # still replays
        assert r.verify().bad == {"requests": 1}


def test_a_deleted_row_is_noticed(path: Path) -> None:
    edit(path, "DELETE FROM requests WHERE rid = 7")
    with open_recording(path) as r:
        rep = r.verify()
        assert not rep.ok and "11 rows where the last commit left 12" in " ".join(rep.problems)


def test_schema_version_edited_down_is_noticed(path: Path) -> None:
    edit(path, "UPDATE metadata SET value = '1' WHERE key = 'schema_version'")
    with open_recording(path) as r:
        assert r.schema_version == 2  # the tables decide how it is read
        assert not r.verify().ok and len(r.requests()) == 12


def test_the_verify_command_and_the_results_say_a_file_is_damaged(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`rllmtop verify FILE` exits 0 on a whole file and 1 on a damaged one, naming what is wrong; the
    summary computed from a damaged file (end of run, replay --headless) warns that rows were left out."""
    from rllmtop.cli import main
    from rllmtop.session.results import recording_results

    assert main(["verify", str(path)]) == 0
    assert "rows check out" in capsys.readouterr().out
    assert not any("damaged" in w for w in recording_results(path).warnings)
    edit(
        path,
        "UPDATE requests SET status = 'exploded' WHERE rid = 2",
        "UPDATE requests SET t_done = 'x' WHERE rid = 3",
    )
    assert main(["verify", str(path)]) == 1
    out = capsys.readouterr().out
    assert str(path) in out and "requests rows fail their checks" in out
    warn = [w for w in recording_results(path).warnings if "damaged" in w]
    assert len(warn) == 1 and str(path) in warn[0] and "rllmtop verify" in warn[0]
