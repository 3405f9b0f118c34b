#!/usr/bin/env python3
"""Renders the bundled sample images (examples/images/*.png): a small synthetic
room (checkered floor, textured back and side walls, three spheres) seen by a
camera that slides and turns a little, ray-cast with numpy. Our own scene, so
no licence question; run by hand, the PNGs are committed.

    python scripts/make_sample_images.py [OUT_DIR] [N] [WIDTH] [HEIGHT]
"""
import sys
import numpy as np
from PIL import Image

OUT = sys.argv[1] if len(sys.argv) > 1 else "examples/images"
N = int(sys.argv[2]) if len(sys.argv) > 2 else 4
W = int(sys.argv[3]) if len(sys.argv) > 3 else 320
H = int(sys.argv[4]) if len(sys.argv) > 4 else 240

SPHERES = [  # centre, radius, colour
    (np.array([-0.8, -0.6, 4.0]), 0.4, np.array([0.85, 0.25, 0.2])),
    (np.array([0.6, -0.5, 5.5]), 0.5, np.array([0.2, 0.6, 0.85])),
    (np.array([0.0, -0.75, 3.0]), 0.25, np.array([0.9, 0.8, 0.2])),
]
FLOOR_Y, BACK_Z, LEFT_X, RIGHT_X = -1.0, 8.0, -2.5, 2.5
LIGHT = np.array([0.4, 0.8, -0.45]) / np.linalg.norm([0.4, 0.8, -0.45])


def render(cam_pos, yaw):
    f = 0.9 * W
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    d = np.stack([(xs + 0.5 - W / 2) / f, -(ys + 0.5 - H / 2) / f, np.ones_like(xs)], -1)
    c, s = np.cos(yaw), np.sin(yaw)
    R = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    d = d @ R.T
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    t_best = np.full((H, W), np.inf)
    col = np.zeros((H, W, 3))
    nrm = np.zeros((H, W, 3))

    def take(t, colour, normal):
        nonlocal t_best
        hit = (t > 1e-4) & (t < t_best)
        t_best = np.where(hit, t, t_best)
        col[hit] = colour[hit] if colour.ndim == 3 else colour
        nrm[hit] = normal[hit] if normal.ndim == 3 else normal
        return hit

    def plane(axis, value, normal, tex):
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (value - cam_pos[axis]) / d[..., axis]
        p = cam_pos + d * t[..., None]
        take(np.nan_to_num(t, nan=-1.0, posinf=-1.0, neginf=-1.0), tex(p), np.array(normal, float))

    def checker(p, a, b, scale, c1, c2):
        k = (np.floor(p[..., a] / scale) + np.floor(p[..., b] / scale)) % 2
        return np.where(k[..., None] > 0, c1, c2)

    plane(1, FLOOR_Y, [0, 1, 0], lambda p: checker(p, 0, 2, 0.5, np.array([0.9, 0.9, 0.85]), np.array([0.3, 0.3, 0.35])))
    plane(2, BACK_Z, [0, 0, -1], lambda p: 0.55 + 0.35 * np.stack([np.sin(p[..., 0] * 3) * 0.5 + 0.5, np.full(p.shape[:2], 0.6), np.cos(p[..., 1] * 4) * 0.5 + 0.5], -1) * 0.6)
    plane(0, LEFT_X, [1, 0, 0], lambda p: checker(p, 1, 2, 0.7, np.array([0.75, 0.55, 0.35]), np.array([0.55, 0.4, 0.25])))
    plane(0, RIGHT_X, [-1, 0, 0], lambda p: checker(p, 1, 2, 0.7, np.array([0.4, 0.65, 0.45]), np.array([0.3, 0.5, 0.35])))
    for centre, r, colour in SPHERES:
        oc = cam_pos - centre
        b = np.sum(d * oc, -1)
        disc = b * b - (oc @ oc - r * r)
        t = np.where(disc > 0, -b - np.sqrt(np.maximum(disc, 0)), -1.0)
        p = cam_pos + d * t[..., None]
        n = (p - centre) / r
        take(t, np.broadcast_to(colour, (H, W, 3)), n)
    shade = 0.35 + 0.65 * np.clip(np.sum(nrm * LIGHT, -1), 0, 1)
    img = col * shade[..., None]
    img[~np.isfinite(t_best)] = [0.6, 0.75, 0.9]
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


if __name__ == "__main__":
    import os
    os.makedirs(OUT, exist_ok=True)
    for i in range(N):
        a = i / max(N - 1, 1)
        pos = np.array([-0.6 + 1.2 * a, 0.0, 0.0 + 0.3 * a])
        Image.fromarray(render(pos, yaw=0.12 - 0.24 * a)).save(os.path.join(OUT, f"frame_{i:03d}.png"), optimize=True)
        print(os.path.join(OUT, f"frame_{i:03d}.png"))
