"""Summarise an MCAP recording of the `recorder` node as JSON, for the end-to-end tests.

    .venv/bin/python tests/mcap_check.py FILE.mcap [--rerun]

Reads the file with the `mcap` Python package and its protobuf decoder
(`mcap==1.6.0`, `mcap-protobuf-support==0.6.0`, installed into .venv by
scripts/setup.sh), from the start, as a stream: a file cut short by a killed
recorder is read up to its last complete chunk (`error` says where it stopped).
With `--rerun` it also converts the file with the Rerun CLI of rerun-sdk 0.36.3
(`rerun mcap convert FILE -o FILE.rrd`, headless) and summarises the .rrd with
`rrd_check.summary` (under `rerun`; `rerun_error` when the conversion fails).

Prints one JSON document:

    {"summary": bool (the file has its summary: finished by the recorder),
     "error": null | "why reading stopped early",
     "channels": {topic: {"schema", "schema_encoding", "message_encoding", "messages"}},
     "records": [{"topic", "sequence", "log_time", "publish_time", "stream", "seq",
                  "recv_ns", "metadata" (typed JSON), "arrow_type", "payload_len",
                  "payload_topic"}],
     "images": [{"topic", "sequence", "schema", "frame_id", "timestamp_ns", "encoding"
                 or "format", "width", "height", "step", "len", "hex" (the data as hex,
                 up to 256 KiB, else null), "n_finite", "mean" (32FC1)}],
     "calibrations": [{"topic", "sequence", "frame_id", "width", "height", "K", "P"}],
     "transforms": [{"topic", "sequence", "parent", "child", "translation", "rotation"}],
     "points": [{"topic", "sequence", "frame_id", "n", "stride", "fields", "mean"}],
     "rerun": {...rrd_check summary...}}
"""

import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np
from mcap.exceptions import McapError
from mcap.reader import NonSeekingReader, make_reader
from mcap_protobuf.decoder import DecoderFactory


# Images up to this size come with their bytes (`hex`), for exact comparisons.
HEX_LIMIT = 256 << 10


def ts_ns(t):
    return t.seconds * 1_000_000_000 + t.nanos if t is not None else None


def has_summary(path):
    try:
        with open(path, "rb") as f:
            return make_reader(f).get_summary() is not None
    except Exception:  # noqa: BLE001 - any failure means no usable summary
        return False


def image(topic, schema, msg, proto):
    out = {"topic": topic, "sequence": msg.sequence, "schema": schema.name,
           "frame_id": proto.frame_id, "timestamp_ns": ts_ns(proto.timestamp),
           "len": len(proto.data),
           "hex": proto.data.hex() if len(proto.data) <= HEX_LIMIT else None}
    if schema.name == "foxglove.RawImage":
        out.update(encoding=proto.encoding, width=proto.width, height=proto.height,
                   step=proto.step)
        if proto.encoding == "32FC1":
            vals = np.frombuffer(proto.data, dtype="<f4", count=len(proto.data) // 4)
            fin = vals[np.isfinite(vals)].astype(np.float64)
            out["n_finite"] = int(fin.size)
            out["mean"] = float(fin.mean()) if fin.size else None
    else:
        out["format"] = proto.format
    return out


def read(path):
    doc = {"summary": has_summary(path), "error": None, "channels": {}, "records": [],
           "images": [], "calibrations": [], "transforms": [], "points": []}
    with open(path, "rb") as f:
        reader = NonSeekingReader(f, decoder_factories=[DecoderFactory()])
        try:
            # File order (a stream: no summary needed, nothing sorted in memory).
            for schema, channel, msg, proto in reader.iter_decoded_messages(
                    log_time_order=False):
                name = schema.name if schema else ""
                ch = doc["channels"].setdefault(channel.topic, {
                    "schema": name,
                    "schema_encoding": schema.encoding if schema else "",
                    "message_encoding": channel.message_encoding, "messages": 0})
                ch["messages"] += 1
                topic, seq = channel.topic, msg.sequence
                if name == "da3.Record":
                    doc["records"].append({
                        "topic": topic, "sequence": seq, "log_time": msg.log_time,
                        "publish_time": msg.publish_time, "stream": proto.stream,
                        "seq": proto.seq, "recv_ns": proto.recv_ns,
                        "metadata": json.loads(proto.metadata),
                        "arrow_type": proto.arrow_type, "payload_len": len(proto.payload),
                        "payload_topic": proto.payload_topic})
                elif name in ("foxglove.RawImage", "foxglove.CompressedImage"):
                    doc["images"].append(image(topic, schema, msg, proto))
                elif name == "foxglove.CameraCalibration":
                    doc["calibrations"].append({
                        "topic": topic, "sequence": seq, "frame_id": proto.frame_id,
                        "width": proto.width, "height": proto.height,
                        "K": list(proto.K), "P": list(proto.P)})
                elif name == "foxglove.FrameTransform":
                    t, q = proto.translation, proto.rotation
                    doc["transforms"].append({
                        "topic": topic, "sequence": seq, "parent": proto.parent_frame_id,
                        "child": proto.child_frame_id, "translation": [t.x, t.y, t.z],
                        "rotation": [q.x, q.y, q.z, q.w]})
                elif name == "foxglove.PointCloud":
                    stride = proto.point_stride
                    n = len(proto.data) // stride if stride else 0
                    mean = None
                    if n and stride >= 12:
                        rows = np.frombuffer(proto.data, dtype=np.uint8,
                                             count=n * stride).reshape(n, stride)
                        xyz = rows[:, :12].copy().view("<f4").astype(np.float64)
                        mean = [float(v) for v in xyz.mean(axis=0)]
                    doc["points"].append({
                        "topic": topic, "sequence": seq, "frame_id": proto.frame_id, "n": n,
                        "stride": stride,
                        "fields": [[fl.name, fl.offset, fl.type] for fl in proto.fields],
                        "mean": mean})
        except (McapError, EOFError, struct.error) as e:
            doc["error"] = f"{type(e).__name__}: {e}"
    return doc


def rerun_summary(path):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import rrd_check  # noqa: E402 - next to this file

    rerun = os.path.join(os.path.dirname(sys.executable), "rerun")
    with tempfile.TemporaryDirectory() as d:
        rrd = os.path.join(d, "converted.rrd")
        p = subprocess.run([rerun, "mcap", "convert", path, "-o", rrd],
                           capture_output=True, text=True, check=False)
        if p.returncode != 0 or not os.path.exists(rrd):
            return None, f"rerun mcap convert failed ({p.returncode}): {p.stderr[-2000:]}"
        try:
            return rrd_check.summary(rrd), None
        except Exception as e:  # noqa: BLE001 - reported to the test
            return None, f"the converted .rrd does not read: {e}; {p.stderr[-2000:]}"


def main(argv):
    if len(argv) not in (2, 3) or (len(argv) == 3 and argv[2] != "--rerun"):
        sys.exit("usage: mcap_check.py FILE.mcap [--rerun]")
    doc = read(argv[1])
    if len(argv) == 3:
        doc["rerun"], doc["rerun_error"] = rerun_summary(argv[1])
    json.dump(doc, sys.stdout, default=str)
    print()


if __name__ == "__main__":
    main(sys.argv)
