"""Reads dora-da3's export files with the Python tools others use and prints one JSON summary.

    export_check.py [--colmap DIR] [--glb FILE] [--ply FILE]

--colmap: a COLMAP model (binary or text) read by pycolmap: cameras, images, points, and every
          observation reprojected: the 2D point against its 3D point seen through the image's
          pose and camera (`max_reprojection_px`); every track element must point back at a 2D
          point holding that 3D point (`tracks_consistent`). COLMAP's readers rebuild each side
          from the other (2D point ids from tracks and back), so this sees observations if
          either is written; da3-io's colmap unit tests check both in the bytes.
--glb:    the glTF scene loaded by trimesh: each geometry's kind and vertex count.
--ply:    the point cloud read by plyfile: count, property names, the first vertex.

The .venv of scripts/setup.sh holds pycolmap, trimesh and plyfile (pinned there). Used by
nodes/da3/tests/cli.rs (the `da3` CLI's exports) and tests/tests/export.rs (depth-export's).
"""

import argparse
import json

import numpy as np


def colmap(path):
    import pycolmap

    rec = pycolmap.Reconstruction(path)
    worst = 0.0
    observations = 0
    images = []
    for image_id in sorted(rec.images):
        image = rec.images[image_id]
        cam = rec.cameras[image.camera_id]
        seen = [p for p in image.points2D if p.has_point3D()]
        observations += len(seen)
        if seen:
            xyz = np.array([rec.points3D[p.point3D_id].xyz for p in seen])
            uv = cam.img_from_cam(image.cam_from_world() * xyz)
            xy = np.array([p.xy for p in seen])
            worst = max(worst, float(np.linalg.norm(uv - xy, axis=1).max()))
        images.append(
            {"id": image_id, "name": image.name, "camera_id": image.camera_id, "observations": len(seen)}
        )
    consistent = all(
        rec.images[el.image_id].points2D[el.point2D_idx].point3D_id == pid
        for pid, pt in rec.points3D.items()
        for el in pt.track.elements
    )
    cams = [
        {"id": cid, "model": c.model.name, "width": c.width, "height": c.height, "params": list(map(float, c.params))}
        for cid, c in sorted(rec.cameras.items())
    ]
    return {
        "cameras": cams,
        "images": images,
        "num_points3D": rec.num_points3D(),
        "num_observations": rec.compute_num_observations(),
        "observations_counted": observations,
        "mean_track_length": rec.compute_mean_track_length(),
        "max_reprojection_px": worst,
        "tracks_consistent": consistent,
    }


def glb(path):
    import trimesh

    scene = trimesh.load(path, force="scene")
    geometry = {name: [type(g).__name__, len(g.vertices)] for name, g in scene.geometry.items()}
    clouds = [g for g in scene.geometry.values() if isinstance(g, trimesh.PointCloud)]
    first = clouds[0].vertices[0].tolist() if clouds and len(clouds[0].vertices) else None
    return {"geometry": geometry, "first_point": first}


def ply(path):
    from plyfile import PlyData

    data = PlyData.read(path)
    v = data["vertex"]
    first = [float(v[k][0]) for k in ("x", "y", "z")] if v.count else None
    return {"count": v.count, "properties": [p.name for p in v.properties], "first_point": first}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--colmap")
    ap.add_argument("--glb")
    ap.add_argument("--ply")
    a = ap.parse_args()
    out = {}
    if a.colmap:
        out["colmap"] = colmap(a.colmap)
    if a.glb:
        out["glb"] = glb(a.glb)
    if a.ply:
        out["ply"] = ply(a.ply)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
