"""Indicator engines: one interface (`IndicatorEngine`), numpy (in-process) and Spark implementations
chosen by `[stockpipe] engine`."""

from __future__ import annotations

import os

from stockpipe.engines.base import ChunkRef, EngineError, IndicatorEngine, computed_by

ENGINES = ("numpy", "spark")

_OPEN: dict[tuple[str, int], IndicatorEngine] = {}


def open_engine(name: str) -> IndicatorEngine:
    """The engine called `name`, shared within a process (a forked Luigi worker gets its own)."""
    key = (name, os.getpid())
    engine = _OPEN.get(key)
    if engine is None:
        if name == "numpy":
            from stockpipe.engines.numpy_engine import NumpyEngine

            engine = NumpyEngine()
        elif name == "spark":
            from stockpipe.engines.spark_engine import SparkEngine

            engine = SparkEngine.from_config()
        else:
            raise EngineError(f"unknown indicator engine {name!r}: choose {' or '.join(ENGINES)} in [stockpipe] engine")
        _OPEN[key] = engine
    return engine


__all__ = ["ChunkRef", "ENGINES", "EngineError", "IndicatorEngine", "computed_by", "open_engine"]
