"""YOLOv9 / GELAN / YOLOv7 / YOLO-RD networks, chosen by name (``NETS``, ``build_net``)."""
from __future__ import annotations

from models.nets.graph import GraphNet
from models.nets.v7 import V7
from models.nets.v9 import (
    RD9C,
    V9C,
    V9E,
    V9M,
    V9S,
    V9T,
    GelanC,
    GelanE,
    GelanM,
    GelanS,
    GelanT,
)

NETS: dict[str, type[GraphNet]] = {cls.name: cls for cls in (
    V9T, V9S, V9M, V9C, V9E, GelanT, GelanS, GelanM, GelanC, GelanE, V7, RD9C)}


def build_net(name: str, num_classes: int, coder=None, aux: bool = True, anchors: list | None = None) -> GraphNet:
    """The network ``name`` for ``num_classes`` classes; ``aux=False`` leaves out the PGI branch;
    ``anchors`` (input pixels) replace an anchor-based net's own.

    Raises ValueError listing the valid names when ``name`` is unknown.
    """
    if name not in NETS:
        raise ValueError(f"unknown network {name!r}; valid: {sorted(NETS)}")
    return NETS[name](num_classes, coder=coder, aux=aux, anchors=anchors)


__all__ = ["NETS", "GraphNet", "build_net"]
