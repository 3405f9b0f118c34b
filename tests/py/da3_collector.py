"""A plain Python dora node that keeps every message it gets and writes them to one .npz
when its inputs close: `<input>/<camera>/<frame_id>` -> values, plus the metadata as JSON
(`<key>.meta`). Env: OUT (the .npz path)."""
import json
import os

import numpy as np
import pyarrow as pa
from dora import Node

node = Node()
arrays = {}
for event in node:
    if event["type"] != "INPUT":
        continue
    md = event["metadata"]
    key = f'{event["id"]}/{md.get("camera", "")}/{md.get("frame_id", "")}'
    value = event["value"]
    if pa.types.is_string(value.type):
        arrays[key] = np.array(value.to_pylist())
    else:
        arrays[key] = value.to_numpy(zero_copy_only=False)
    arrays[key + ".meta"] = np.array(json.dumps({k: v for k, v in md.items()
                                                 if isinstance(v, (int, float, str, bool, list))}))
np.savez(os.environ["OUT"], **arrays)
