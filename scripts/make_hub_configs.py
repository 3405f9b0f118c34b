"""Writes a hub-format config.json for every published DA3 variant, as the hub repos
`depth-anything/<NAME>` hold them: `{"model_name": ..., "config": {...}}`, the nested `config`
being the reference package's resolved preset (depth-anything-3==0.1.1). The Rust tests check
that each maps to our preset and that its `config` dict equals our preset field by field.

Run with the reference venv (scripts/setup-reference.sh):
    ~/.cache/dora-da3/ref-venv/bin/python scripts/make_hub_configs.py nodes/da3/tests/fixtures/hub-configs
"""
import json
import sys
from pathlib import Path

from omegaconf import OmegaConf

from depth_anything_3.cfg import load_config
from depth_anything_3.registry import MODEL_REGISTRY

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
for name in sorted(MODEL_REGISTRY):
    cfg = OmegaConf.to_container(load_config(MODEL_REGISTRY[name]), resolve=True)
    doc = {"model_name": name, "config": cfg}
    (out / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out / (name + '.json')}")
