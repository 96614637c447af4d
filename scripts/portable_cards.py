"""Rewrite the bundled models' cards without absolute paths (export does this since 0.2).

    python scripts/portable_cards.py            # rewrites segen_edge/models/*.onnx in place

Only the `segen.card` metadata value changes; graphs and weights are byte-for-byte the same.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from export.exporter import portable_card  # noqa: E402
from segen_edge.files import atomic_write  # noqa: E402


def main() -> None:
    for path in sorted((ROOT / "segen_edge" / "models").glob("*.onnx")):
        model = onnx.load(str(path), load_external_data=False)
        for prop in model.metadata_props:
            if prop.key == "segen.card":
                card = json.loads(prop.value)
                fixed = portable_card(card, ROOT)
                if fixed != card:
                    prop.value = json.dumps(fixed, sort_keys=True)
                    data = model.SerializeToString()
                    atomic_write(path, lambda fh, data=data: fh.write(data))
                    print(f"{path.name}: card paths made portable")


if __name__ == "__main__":
    main()
