"""The errors of :mod:`xception_core.weights`, each with what the user can do about it.

An error holds the problem (``err.message``, one line) and, where there is one, a
:class:`Remedy`: prose with commands of the project's command line in it, each given
as its arguments (``("weights", "download", "xception-imagenet")``). The core does not
know what the front end calls that command line, nor whether the user can run it at
all (an API client cannot), so each front end renders the commands in its own words
with :meth:`WeightsError.explain`. ``str(err)`` renders them neutrally, for Python
callers and logs.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = [
    "Command",
    "Remedy",
    "WeightsError",
    "UnknownModelError",
    "InvalidModelNameError",
    "ModelExistsError",
    "CheckpointError",
    "LabelsError",
    "CardError",
    "WeightsMissingError",
    "IntegrityError",
    "DownloadError",
    "DownloadHashMismatch",
]


@dataclass(frozen=True)
class Command:
    """One command of the command line, as its arguments without the program's name."""

    args: tuple[str, ...]

    def line(self, program: str) -> str:
        """The shell command line that runs it as ``program``."""
        return shlex.join((program, *self.args))


@dataclass(frozen=True)
class Remedy:
    """What to do about an error: prose and commands, in reading order.

    A renderer turns each command into a verb phrase ("run: ..."), so the prose
    around it reads "to re-import it, <command>" or "... then <command>".
    """

    parts: tuple[str | Command, ...]

    @property
    def commands(self) -> tuple[Command, ...]:
        return tuple(p for p in self.parts if isinstance(p, Command))

    def render(self, command: Callable[[Command], str]) -> str:
        return "".join(p if isinstance(p, str) else command(p) for p in self.parts)


def remedy(*parts: str | Command | tuple[str, ...]) -> Remedy:
    """Build a :class:`Remedy`: strings are prose, tuples are the arguments of a command."""
    return Remedy(tuple(p if isinstance(p, (str, Command)) else Command(tuple(p)) for p in parts))


def neutral_command(command: Command) -> str:
    """How ``str(err)`` shows a command: its arguments, without a program name."""
    return f"run `{shlex.join(command.args)}` with the command line"


class WeightsError(Exception):
    """Base class of every error of :mod:`xception_core.weights`."""

    def __init__(self, message: str, remedy: Remedy | None = None) -> None:
        super().__init__(message, remedy)  # both in args: the error survives pickling
        self.message = message
        self.remedy = remedy

    def explain(self, command: Callable[[Command], str]) -> str:
        """One line: the problem, then the remedy with its commands rendered by ``command``."""
        if self.remedy is None:
            return self.message
        return f"{self.message}; {self.remedy.render(command)}"

    def __str__(self) -> str:
        return self.explain(neutral_command)


class UnknownModelError(WeightsError, KeyError):
    """No model with that id; the message lists the valid ids, ``choices`` holds them when known.

    (``WeightsError.__str__`` comes first in the MRO: KeyError's would quote the message.)
    """

    def __init__(self, message: str, remedy: Remedy | None = None, choices: Sequence[str] | None = None) -> None:
        super().__init__(message, remedy)
        self.choices = None if choices is None else tuple(choices)


class InvalidModelNameError(WeightsError, ValueError):
    """A model name that is malformed or reserved."""


class ModelExistsError(WeightsError):
    """Importing under a name that is already registered (without ``overwrite``)."""


class CheckpointError(WeightsError, ValueError):
    """A checkpoint file that cannot be read or does not fit the architecture."""


class LabelsError(WeightsError, ValueError):
    """A labels file that does not fit the model (count, encoding, blank lines...)."""


class CardError(WeightsError, ValueError):
    """A model card (JSON) that is malformed."""


class WeightsMissingError(WeightsError):
    """The model is known but its weights are not there; the remedy says how to get them."""


class IntegrityError(WeightsError):
    """A file whose sha256 differs from the one it must have."""


class DownloadError(WeightsError):
    """A download failed (HTTP error, network, truncated, wrong hash)."""


class DownloadHashMismatch(DownloadError, IntegrityError):
    """The downloaded bytes do not have the expected sha256 prefix."""
