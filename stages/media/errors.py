"""The one exception every user-facing media rejection raises."""

from __future__ import annotations


class MediaError(ValueError):
    """A rejected input: which request ``field`` it concerns, what is wrong, and how to fix it.

    ``str(err)`` is one line, ``"<field>: <message>. Fix: <fix>"``, fit for an API error body or a log.
    """

    def __init__(self, field: str, message: str, fix: str):
        self.field = field
        self.message = message.rstrip(". ")
        self.fix = fix.rstrip(". ")
        super().__init__(f"{self.field}: {self.message}. Fix: {self.fix}")

    def to_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message, "fix": self.fix}

    def __reduce__(self):
        return type(self), (self.field, self.message, self.fix)
