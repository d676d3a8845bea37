"""Detector-head registry: one interface, one module per method, imported lazily.

Only the requested method's module is imported (``get``), so asking for the
linear probe never imports the others' dependencies.
"""

from __future__ import annotations

import importlib

from export.heads.base import EmbeddingSet, FitReport, HeadConfig, HeadMethod

#: registry name -> "module:Class"
REGISTRY: dict[str, str] = {
    "linear-probe": "export.heads.linear_probe:LinearProbe",
    "knn": "export.heads.knn:KNN",
    "gendet": "export.heads.gendet:GenDet",
    "gendet-dr": "export.heads.gendet_dr:GenDetDR",
    "ntf": "export.heads.ntf:NTF",
    "freq": "export.heads.freq:Freq",
}


def names() -> list[str]:
    return sorted(REGISTRY)


def get(name: str) -> type[HeadMethod]:
    try:
        target = REGISTRY[name]
    except KeyError:
        raise SystemExit(f"unknown head method {name!r}; known: {', '.join(names())}") from None
    module_name, cls_name = target.split(":")
    return getattr(importlib.import_module(module_name), cls_name)


__all__ = ["REGISTRY", "EmbeddingSet", "FitReport", "HeadConfig", "HeadMethod", "get", "names"]
