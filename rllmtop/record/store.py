"""Transition shim: the recording's storage now lives in its own modules.

- :mod:`rllmtop.record.schema`: versions and layout (the table list is in its docstring)
- :mod:`rllmtop.record.writer`: :class:`Recorder`
- :mod:`rllmtop.record.reader`: :func:`open_recording`, :class:`Recording`, ``TimedRecord``
- :mod:`rllmtop.record.integrity`: :class:`IntegrityReport` (``Recording.verify()``)
- :mod:`rllmtop.record.rebuild`: :func:`request_events` (replay-event rebuilding)

Import from those; this module goes once every importer has moved.
"""

from __future__ import annotations

from rllmtop.record.integrity import IntegrityReport
from rllmtop.record.reader import Recording, TimedRecord, open_recording
from rllmtop.record.rebuild import PROGRESS_INTERVAL, request_events
from rllmtop.record.schema import SCHEMA_VERSION
from rllmtop.record.writer import Recorder

__all__ = [
    "PROGRESS_INTERVAL",
    "SCHEMA_VERSION",
    "IntegrityReport",
    "Recorder",
    "Recording",
    "TimedRecord",
    "open_recording",
    "request_events",
]
