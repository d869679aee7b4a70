"""The embedded simulated reasoning engine: an OpenAI-compatible HTTP server shaped like vLLM 0.33
serving a reasoning model, with a scheduler/KV-cache model that also runs in virtual time.

It shares nothing with the client side of rllmtop but the HTTP protocol.

- ``rllmtop.sim.cli.main(argv)``: ``rllmtop sim serve|profiles`` (also ``python -m rllmtop.sim``).
- ``rllmtop.sim.server``: :class:`SimServer`, :func:`serve_in_background`, :func:`serve_in_thread`.
- ``rllmtop.sim.virtual``: :func:`run_virtual` (requests with arrival times, stepped as fast as the CPU
  allows); ``rllmtop.sim.synth``: Gamma arrivals and protocol-conformant prompts.
- ``rllmtop.sim.engine``: the pure scheduler; ``rllmtop.sim.profiles``: hardware x model profiles;
  ``rllmtop.sim.outputs``: what the simulated model says; ``rllmtop.sim.difficulty``: the tier of a
  prompt it did not generate.
"""

__all__: list[str] = []
