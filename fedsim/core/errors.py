"""The error every bad input becomes: one line naming the field and the fix (exit code 2).

Its own module, importing nothing, so that reading and refusing a hostile file costs no
heavy import.
"""


class ScenarioError(ValueError):
    """A scenario problem, reported as one line naming the field and the fix."""
