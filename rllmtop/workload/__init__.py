"""The load generator: arrival schedules, prompt sets, grading, the streaming client and the open-loop runner.

``runner.Runner`` is what a session starts; the other modules are its parts (see each module's docstring).
"""
