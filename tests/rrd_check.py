"""Summarise a Rerun .rrd file as JSON, for the end-to-end tests.

    .venv/bin/python tests/rrd_check.py FILE.rrd

Opens the file with the Rerun SDK (rerun-sdk==0.36.3, installed into .venv by
scripts/setup.sh) through `RrdReader(...).store()`, which needs the file's
footer: a file whose writer was not closed properly fails here. Prints one
JSON document:

    {"recordings": [{"application_id", "recording_id"}],
     "entities": {"/world/...": {"static": bool, "timelines": [...],
                                 "archetypes": {"Points3D": N_rows, ...},
                                 "rows": [{"frame", "capture_time", ...}]}}}

Each row holds the values the tests check, per archetype:
  Transform3D  translation [x, y, z], quaternion [x, y, z, w]
  Pinhole      resolution [w, h], image_from_camera (column-major 3x3)
  DepthImage   width, height, datatype, meter, n_finite, mean (finite values)
  Image        width, height, color_model, datatype
  Points3D     n (points), n_colors, mean [x, y, z]
  LineStrips3D strip_len (points in the first strip)
(`timestamp`: also given for the rows of files converted from MCAP, whose
Foxglove messages carry their own time; `tests/mcap_check.py` uses `summary`.)
"""

import json
import struct
import sys

import pyarrow as pa

from rerun.experimental import RrdReader

# rerun.datatypes.ChannelDatatype / ColorModel values.
CHANNEL = {6: "U8", 7: "I8", 8: "U16", 9: "I16", 10: "U32", 11: "I32", 12: "U64",
           13: "I64", 33: "F16", 34: "F32", 35: "F64"}
COLOR = {1: "L", 2: "RGB", 3: "RGBA", 4: "BGR", 5: "BGRA"}


def first(v):
    """The first instance of a component cell (cells are lists), or None."""
    if v is None:
        return None
    return v[0] if isinstance(v, list) and v else None


def depth_stats(buf, fmt):
    dt = CHANNEL.get(fmt.get("channel_datatype"), str(fmt.get("channel_datatype")))
    out = {"width": fmt["width"], "height": fmt["height"], "datatype": dt}
    if dt == "F32":
        data = bytes(buf)
        vals = struct.unpack(f"<{len(data) // 4}f", data)
        fin = [v for v in vals if v == v and abs(v) != float("inf")]
        out["n_values"] = len(vals)
        out["n_finite"] = len(fin)
        out["mean"] = sum(fin) / len(fin) if fin else None
    return out


def row_values(comps):
    """comps: {"Archetype:field": cell} of one row -> {archetype: values}."""
    by_arch = {}
    for name, cell in comps.items():
        if cell is None:
            continue
        arch, _, field = name.partition(":")
        by_arch.setdefault(arch, {})[field] = cell
    out = {}
    for arch, f in by_arch.items():
        v = {}
        if arch == "Transform3D":
            v["translation"] = first(f.get("translation"))
            v["quaternion"] = first(f.get("quaternion"))
        elif arch == "Pinhole":
            v["resolution"] = first(f.get("resolution"))
            v["image_from_camera"] = first(f.get("image_from_camera"))
        elif arch == "DepthImage":
            fmt, buf = first(f.get("format")), first(f.get("buffer"))
            if fmt is not None and buf is not None:
                v.update(depth_stats(buf, fmt))
            v["meter"] = first(f.get("meter"))
        elif arch == "Image":
            fmt = first(f.get("format"))
            if fmt is not None:
                v["width"], v["height"] = fmt["width"], fmt["height"]
                v["color_model"] = COLOR.get(fmt.get("color_model"), fmt.get("color_model"))
                v["datatype"] = CHANNEL.get(fmt.get("channel_datatype"), fmt.get("channel_datatype"))
        elif arch == "Points3D":
            pos = f.get("positions") or []
            v["n"] = len(pos)
            v["n_colors"] = len(f.get("colors") or [])
            v["mean"] = [sum(p[i] for p in pos) / len(pos) for i in range(3)] if pos else None
        elif arch == "LineStrips3D":
            v["strip_len"] = len(first(f.get("strips")) or [])
        out[arch] = v
    return out


def summary(path):
    """The summary of one .rrd file (see the module docs), as a dict."""
    reader = RrdReader(path)
    recordings = [{"application_id": r.application_id, "recording_id": r.recording_id}
                  for r in reader.recordings()]
    store = reader.store()  # needs the footer: fails on an unfinished file
    entities = {}
    for chunk in store.stream():
        batch = chunk.to_record_batch()
        ent = entities.setdefault(chunk.entity_path, {
            "static": chunk.is_static, "timelines": set(), "archetypes": {}, "rows": []})
        ent["timelines"].update(chunk.timeline_names)
        cols = {}
        for i, field in enumerate(batch.schema):
            md = {k.decode(): v.decode() for k, v in (field.metadata or {}).items()}
            if md.get("rerun:kind") == "data":
                cols[md.get("rerun:component", field.name)] = batch.column(i).to_pylist()
        # Both index columns as integers (capture_time: ns since the epoch).
        # (timestamp: the Foxglove messages' own time, in .rrd files converted from MCAP)
        index = {name: batch.column(name).cast(pa.int64()).to_pylist()
                 for name in ("frame", "capture_time", "timestamp") if name in batch.schema.names}
        for r in range(batch.num_rows):
            vals = row_values({name: col[r] for name, col in cols.items()})
            row = {"frame": index.get("frame", [None] * batch.num_rows)[r]}
            row["capture_time"] = index.get("capture_time", [None] * batch.num_rows)[r]
            if "timestamp" in index:
                row["timestamp"] = index["timestamp"][r]
            for arch, v in vals.items():
                ent["archetypes"][arch] = ent["archetypes"].get(arch, 0) + 1
                row[arch] = v
            ent["rows"].append(row)
    for ent in entities.values():
        ent["timelines"] = sorted(ent["timelines"])
        ent["rows"].sort(key=lambda r: (r["frame"] is None, r["frame"] or 0,
                                        r.get("timestamp") or 0))
    return {"recordings": recordings, "entities": entities}


def main(path):
    json.dump(summary(path), sys.stdout, default=str)
    print()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: rrd_check.py FILE.rrd")
    main(sys.argv[1])
