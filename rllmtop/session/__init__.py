"""A session: sources -> records -> sinks, on one clock, with a lifecycle that always cleans up.

- :mod:`rllmtop.session.core`: :class:`Session` (the bus, the clock, the lifecycle and the stop policy).
- :mod:`rllmtop.session.engines`: the engine side (launch or attach, probe, metric sources, teardown).
- :mod:`rllmtop.session.load`: the load side (the senders of the scenario's schedule).
"""

from rllmtop.session.core import Session, SessionOutcome, SessionPlan, default_record_path

__all__ = ["Session", "SessionOutcome", "SessionPlan", "default_record_path"]
