"""Parameter counts and GFLOPs of every YOLOv9-family network next to the spec's table (YOLOV9.md 4.7).

    python benchmarks/model_info.py [--tiny] [name ...]

Per network (nc = 80): training parameters (auxiliary branch built, unfused), inference
parameters unfused (aux=False) and fused (models.fuse.deploy_model), and GFLOPs of the unfused
inference model at 640x640 (torch FlopCounterMode, 2 FLOPs per multiply-add).

Last line: RESULT {"v9-t": {"params_train": .., "params_infer": .., "params_fused": .., "gflops": ..}, ...}

--tiny (or BENCH_TINY=1, benchmarks/common.py): the same measurements on one thread, of v9-t and
gelan-t only unless names are given.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import pick, print_result, tiny_mode
from models.fuse import deploy_model
from models.nets import NETS, build_net
from utils.dist import set_cpu_threads
from utils.model_info import count_params, gflops

# spec section 4.7: (training unfused, inference fused, GFLOPs @ 640 inference unfused); None = not given.
# gelan-X is v9-X without the auxiliary branch; v7's GFLOPs is the published (fused) figure.
SPEC = {
    "v9-t": (3_717_680, 2_407_632, 9.9), "v9-s": (9_804_512, 7_105_888, 26.7),
    "v9-m": (32_878_432, 19_978_672, 76.8), "v9-c": (51_182_080, 25_288_768, 102.8),
    "v9-e": (69_529_664, 57_345_920, 191.1), "rd-9c": (51_722_240, 25_827_392, 109.7),
    "v7": (37_622_682, 36_907_898, 104.7),
}
SPEC.update({f"gelan-{s}": (None, *SPEC[f"v9-{s}"][1:]) for s in "tsmce"})
IMG_SIZE = 640
TINY_NAMES = ["v9-t", "gelan-t"]


def measure(name: str) -> dict:
    train = build_net(name, 80)
    infer = build_net(name, 80, aux=False)
    return {"params_train": count_params(train), "params_infer": count_params(infer),
            "params_fused": count_params(deploy_model(train)), "gflops": round(gflops(infer, IMG_SIZE), 2)}


def cell(value, spec) -> str:
    if spec is None:
        return f"{value:>14,}" if isinstance(value, int) else f"{value:>7.1f}"
    if isinstance(value, int):
        return f"{value:>14,} {'=' if value == spec else '≠'}"
    return f"{value:>7.1f} ({(value - spec) / spec:+.1%})"


def main(argv: list[str]) -> None:
    tiny = tiny_mode(argv)
    set_cpu_threads(pick(tiny, 0, 1))
    names = argv or pick(tiny, list(NETS), TINY_NAMES)
    unknown = [n for n in names if n not in NETS]
    if unknown:
        raise SystemExit(f"unknown network(s) {unknown}; valid: {sorted(NETS)}")
    results = {}
    print(f"{'model':8} {'train params':>16} {'infer params':>14} {'fused params':>16} {'GFLOPs@640':>17}"
          f"   spec: train / fused / GFLOPs")
    for name in names:
        r = results[name] = measure(name)
        s_train, s_fused, s_gflops = SPEC[name]
        spec_txt = " / ".join("-" if v is None else f"{v:,}" for v in SPEC[name])
        print(f"{name:8} {cell(r['params_train'], s_train)} {r['params_infer']:>14,} "
              f"{cell(r['params_fused'], s_fused)} {cell(r['gflops'], s_gflops)}   {spec_txt}")
    print_result(results)


if __name__ == "__main__":
    main(sys.argv[1:])
