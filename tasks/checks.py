"""Input checks that need a look at the data, run before any stage computes.

Kept apart from the stage modules so that checking a run does not import what the stages train
with; each check imports only what it reads.
"""

from __future__ import annotations


def check_prepare(params: dict) -> None:
    """Loads the target (cheap) and makes its split, so a bad dataset, column or shot count fails first."""
    from tasks import prepare

    pool, test = prepare.load_target(params)
    prepare.split_target(params, pool, test)
    if params["source"]["name"] != prepare.BUILTIN_SOURCE:
        prepare.load_source(params)
    elif params["channels"] != 1:
        raise ValueError("prepare.channels: the built-in glyphs source is grayscale; use channels: 1")


CHECKS = {"prepare": check_prepare}
