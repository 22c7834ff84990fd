"""The small base every phase config shares: a frozen dataclass with Keras's config methods.

:class:`~tfedge.PruneConfig`, :class:`~tfedge.QATConfig`,
:class:`~tfedge.ClusterConfig` and :class:`~tfedge.DistillConfig` are plain
data: what a phase does and when. They subclass :class:`PhaseConfig`, which
gives them one ``coerce`` (``wrap``'s shorthands: ``True``, a number or a
name, a dict of arguments, the config itself, or ``None``), ``get_config`` /
``from_config`` (Keras's round trip) and ``__repr__``. A subclass sets its
``wrap`` argument name and shorthand, normalizes fields in ``_normalize`` and
checks them in ``_validate``.

Imports nothing of tfedge, so any stage may use it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar


@dataclasses.dataclass(frozen=True)
class PhaseConfig:
    """Base of the phase configs: frozen, validated on construction, round-trips.

    Subclasses are ``@dataclasses.dataclass(frozen=True)`` and set:

    * ``ARGUMENT``: the ``wrap`` argument it comes from, e.g. ``"prune"``;
    * ``SHORTHAND``: ``(types, field, words)``: a value of ``types`` passed to
      ``wrap`` sets ``field`` (e.g. ``prune=0.8``), ``words`` says so in
      errors; or None;
    * ``NONE_IS_DEFAULT``: ``coerce(None)`` gives the default config instead
      of None (distillation, whose presence is decided by ``teacher=``).

    Example:

    >>> import dataclasses
    >>> @dataclasses.dataclass(frozen=True)
    ... class Demo(PhaseConfig):
    ...     ARGUMENT = "demo"
    ...     SHORTHAND = ((int,), "size", "a size such as 4")
    ...     size: int = 2
    >>> Demo.coerce(4)
    Demo(size=4)
    >>> Demo.from_config(Demo(3).get_config()) == Demo(3)
    True
    """

    ARGUMENT: ClassVar[str] = ""
    SHORTHAND: ClassVar[tuple[tuple[type, ...], str, str] | None] = None
    NONE_IS_DEFAULT: ClassVar[bool] = False

    def __post_init__(self) -> None:
        self._normalize()
        self._validate()

    def _normalize(self) -> None:
        """Turns accepted argument forms into the stored ones (use :meth:`_set`)."""

    def _validate(self) -> None:
        """Raises ValueError naming the problem and the fix."""

    def _set(self, name: str, value: Any) -> None:
        """Sets a field during ``_normalize`` (the instance is frozen afterwards)."""
        object.__setattr__(self, name, value)

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments, as plain values (``from_config`` takes them back)."""
        return {f.name: _copy(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "PhaseConfig":
        """Rebuilds a config from :meth:`get_config`."""
        return cls(**config)

    @classmethod
    def coerce(cls, value: Any) -> "PhaseConfig | None":
        """Turns ``wrap``'s argument into a config (or None: the phase is off).

        Raises:
            ValueError: a value of another type; the message lists the accepted ones.
        """
        if value is None:
            return cls() if cls.NONE_IS_DEFAULT else None
        if value is False and not cls.NONE_IS_DEFAULT:
            return None
        if value is True:
            return cls()
        if isinstance(value, cls):
            return value
        if cls.SHORTHAND is not None and isinstance(value, cls.SHORTHAND[0]) \
                and not isinstance(value, bool):
            return cls(**{cls.SHORTHAND[1]: value})
        if isinstance(value, dict):
            return cls(**value)
        shorthand = f", {cls.SHORTHAND[2]}" if cls.SHORTHAND is not None else ""
        raise ValueError(f"{cls.ARGUMENT}= takes a {cls.__name__}{shorthand}, a dict of "
                         f"{cls.__name__} arguments, True or None; got {type(value).__name__}.")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if _shown(v))
        return f"{type(self).__name__}({args})"


def _shown(value: Any) -> bool:
    """Whether ``__repr__`` shows a value: not None, False or an empty list or dict."""
    return not (value is None or value is False
                or (isinstance(value, (list, dict)) and not value))


def _copy(value: Any) -> Any:
    if isinstance(value, list):
        return list(value)
    if isinstance(value, dict):
        return dict(value)
    return value
