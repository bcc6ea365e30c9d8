"""The method registry: one entry per method, holding what the code needs to know about it.

An entry (``Method``) is made by ``register(...)`` on the function that applies the method to a model
(``tinyattn.methods`` registers every method of the study). Besides that function it holds the
method's default options and their ``source``, its options' range check (``check``), the options it
took in earlier versions (``retired``), its planning speed (``train_tokens_per_second``: real tokens a
second of a training step, one core per run, two runs at a time, as calibrated on the `tune` and `cpu`
records) its FLOPs formula (``flops``: what one layer adds per token, in a deployment form) and the names its
library gives the parameters it adds inside an encoder (``markers``).
``method_options`` resolves a method's options against its entry.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

#: ``flops(options, hidden, length, form) -> int``: one layer's forward FLOPs per token added by the
#: method (multiply-add = 2), in ``form`` (``trained``, ``averaged``, ``unmerged``, ...).
FlopsFormula = Callable[[dict, int, int, str], int]


@dataclass(frozen=True)
class Method:
    name: str
    apply: Callable
    defaults: dict = field(default_factory=dict)
    source: str = ""  # where the default hyper-parameters come from
    description: str = ""
    check: Callable[[dict], object] | None = None  # raises ValueError on an option out of range
    #: options of earlier versions, at the value every record and saved adapter since carries:
    #: ``method_options`` drops them at that value, ``RunParams.identity`` adds them back (run ids)
    retired: dict = field(default_factory=dict)
    train_tokens_per_second: float | None = None  # planning speed; None: the default
    flops: FlopsFormula | None = None  # None: no formula (the benchmark does not time it)
    #: what the method's library names the parameters it adds inside an encoder (``model`` tells
    #: them from the pretrained encoder's own by these)
    markers: tuple[str, ...] = ()


METHODS: dict[str, Method] = {}


def register(name: str, **facts):
    """Register the decorated function as method ``name``'s ``apply``, with the entry's other facts."""

    def wrap(apply):
        METHODS[name] = Method(name, apply, **facts)
        return apply

    return wrap


def added_markers() -> tuple[str, ...]:
    """Every registered method's parameter markers (``Method.markers``), in registration order."""
    return tuple(dict.fromkeys(m for method in METHODS.values() for m in method.markers))


def is_added_parameter(name: str) -> bool:
    """Whether a parameter or module name inside an encoder is one a method library added."""
    return any(marker in name for marker in added_markers())


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def method_options(name: str, options: dict | None = None) -> dict:
    """The method's defaults overridden by ``options``; an option the method does not take, or one out
    of its range (the method's ``check``), is an error.

    A retired option at its retired value is dropped."""
    method = get_method(name)
    retired = method.retired
    for key, value in (options or {}).items():
        if key in retired and value != retired[key]:
            raise ValueError(
                f"method {name!r}: {key} is no longer an option; to start E experts from the trained "
                "one-expert twin, use the run parameter two_stage (tinyattn train --two-stage)"
            )
    options = {k: v for k, v in (options or {}).items() if v is not None and k not in retired}
    unknown = set(options) - set(method.defaults)
    if unknown:
        raise ValueError(
            f"method {name!r} takes no option(s) {sorted(unknown)}; it takes {sorted(method.defaults)}"
        )
    merged = {**copy.deepcopy(method.defaults), **options}
    if method.check is not None:
        method.check(merged)
    return merged
