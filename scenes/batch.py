"""Many similar things as one draw: Panda3D geometry built straight from numpy arrays.

A 70,000-point cloud, a 10,000-layer graph or a 20,000-tile wall is one Geom here
(one draw call), filled by copying numpy buffers into Panda's vertex arrays, never
one Ursina Entity per item (the measured cost of that is in notes/xr-headless.md).
Also: numpy images to Panda textures.
"""

from __future__ import annotations

import numpy as np
from panda3d.core import (
    Geom,
    GeomEnums,
    GeomLines,
    GeomNode,
    GeomPoints,
    GeomTriangles,
    GeomVertexArrayFormat,
    GeomVertexData,
    GeomVertexFormat,
    NodePath,
    SamplerState,
    Texture,
)

_VERTEX_DTYPE = np.dtype([("pos", "<f4", 3), ("colour", "u1", 4), ("uv", "<f4", 2)])
_VERTEX_DTYPE_NO_UV = np.dtype([("pos", "<f4", 3), ("colour", "u1", 4)])


def _format(with_uv: bool) -> GeomVertexFormat:
    arr = GeomVertexArrayFormat()
    arr.add_column("vertex", 3, GeomEnums.NT_float32, GeomEnums.C_point)
    arr.add_column("color", 4, GeomEnums.NT_uint8, GeomEnums.C_color)
    if with_uv:
        arr.add_column("texcoord", 2, GeomEnums.NT_float32, GeomEnums.C_texcoord)
    return GeomVertexFormat.register_format(GeomVertexFormat(arr))


_FORMATS: dict[bool, GeomVertexFormat] = {}


def vertex_format(with_uv: bool = True) -> GeomVertexFormat:
    fmt = _FORMATS.get(with_uv)
    if fmt is None:
        fmt = _FORMATS[with_uv] = _format(with_uv)
        dtype = _VERTEX_DTYPE if with_uv else _VERTEX_DTYPE_NO_UV
        stride = fmt.get_array(0).get_stride()
        if stride != dtype.itemsize:  # layout must match the numpy record exactly
            raise RuntimeError(f"vertex stride {stride} != {dtype.itemsize}")
    return fmt


def _vertex_data(positions: np.ndarray, colours: np.ndarray | None, uvs: np.ndarray | None,
                 dynamic: bool = False) -> GeomVertexData:
    # Points and lines carry no texture coordinates: a narrower vertex is measurably
    # cheaper for llvmpipe to fetch (70,000 points: ~25 % of the frame).
    with_uv = uvs is not None
    n = int(positions.shape[0])
    rec = np.zeros(n, dtype=_VERTEX_DTYPE if with_uv else _VERTEX_DTYPE_NO_UV)
    rec["pos"] = positions
    if colours is None:
        rec["colour"] = 255
    else:
        c = np.asarray(colours)
        if c.dtype != np.uint8:
            c = np.clip(c * 255.0, 0, 255).astype(np.uint8)
        if c.shape[-1] == 3:
            c = np.concatenate([c, np.full((*c.shape[:-1], 1), 255, np.uint8)], axis=-1)
        rec["colour"] = c
    if with_uv:
        rec["uv"] = uvs
    vdata = GeomVertexData("batch", vertex_format(with_uv), GeomEnums.UH_dynamic if dynamic else GeomEnums.UH_static)
    vdata.unclean_set_num_rows(n)
    handle = vdata.modify_array(0)
    memoryview(handle).cast("B")[:] = rec.tobytes()
    return vdata


def _node(name: str, vdata: GeomVertexData, prim: GeomTriangles | GeomLines | GeomPoints) -> NodePath:
    geom = Geom(vdata)
    geom.add_primitive(prim)
    node = GeomNode(name)
    node.add_geom(geom)
    return NodePath(node)


def _indices(prim: GeomTriangles | GeomLines | GeomPoints, idx: np.ndarray) -> None:
    prim.set_index_type(GeomEnums.NT_uint32)
    arr = prim.modify_vertices()
    flat = np.ascontiguousarray(idx, dtype=np.uint32).ravel()
    arr.unclean_set_num_rows(len(flat))
    memoryview(arr).cast("B")[:] = flat.tobytes()


def triangles(name: str, positions: np.ndarray, triangle_indices: np.ndarray,
              colours: np.ndarray | None = None, uvs: np.ndarray | None = None) -> NodePath:
    """One node drawing all triangles (positions [V, 3], indices [T, 3])."""
    prim = GeomTriangles(GeomEnums.UH_static)
    _indices(prim, triangle_indices)
    return _node(name, _vertex_data(positions, colours, uvs), prim)


def lines(name: str, positions: np.ndarray, segment_indices: np.ndarray,
          colours: np.ndarray | None = None, thickness: float = 1.0) -> NodePath:
    """One node drawing all line segments (indices [S, 2])."""
    prim = GeomLines(GeomEnums.UH_static)
    _indices(prim, segment_indices)
    np_ = _node(name, _vertex_data(positions, colours, None), prim)
    np_.set_render_mode_thickness(thickness)
    return np_


def points(name: str, positions: np.ndarray, colours: np.ndarray | None = None, size: float = 4.0,
           perspective: bool = False) -> NodePath:
    """One node drawing every point as a square dot of `size` pixels (or metres with perspective)."""
    prim = GeomPoints(GeomEnums.UH_static)
    _indices(prim, np.arange(len(positions), dtype=np.uint32))
    np_ = _node(name, _vertex_data(positions, colours, None), prim)
    np_.set_render_mode_thickness(size)
    np_.set_render_mode_perspective(perspective)
    return np_


def quads(name: str, centres: np.ndarray, right: np.ndarray, up: np.ndarray,
          colours: np.ndarray | None = None, uv_rects: np.ndarray | None = None) -> NodePath:
    """N quads in one node: centre [N, 3], half-extent vectors right/up ([3] or [N, 3]), uv (u0, v0, u1, v1)."""
    c = np.asarray(centres, dtype=np.float32)
    n = len(c)
    r = np.broadcast_to(np.asarray(right, dtype=np.float32), (n, 3))
    u = np.broadcast_to(np.asarray(up, dtype=np.float32), (n, 3))
    pos = np.stack([c - r - u, c + r - u, c + r + u, c - r + u], axis=1).reshape(-1, 3)
    uv = None
    if uv_rects is not None:
        q = np.asarray(uv_rects, dtype=np.float32)
        uv = np.stack([q[:, [0, 1]], q[:, [2, 1]], q[:, [2, 3]], q[:, [0, 3]]], axis=1).reshape(-1, 2)
    col = None
    if colours is not None:
        cc = np.asarray(colours)
        col = np.repeat(cc, 4, axis=0) if cc.ndim == 2 else None
    base = (np.arange(n, dtype=np.uint32) * 4)[:, None]
    # Front faces are seen from local -z (Ursina's quads face the camera looking +z).
    tri = np.concatenate([base + np.array([0, 1, 2], np.uint32), base + np.array([0, 2, 3], np.uint32)], axis=1)
    return triangles(name, pos, tri.reshape(-1, 3), col, uv)


def boxes(name: str, centres: np.ndarray, half: np.ndarray, colours: np.ndarray) -> NodePath:
    """N axis-aligned boxes in one node (centre [N, 3], half extents [N, 3], colour [N, 3|4])."""
    c = np.asarray(centres, dtype=np.float32)
    h = np.broadcast_to(np.asarray(half, dtype=np.float32), c.shape)
    n = len(c)
    corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], np.float32)
    faces = [  # (corner indices in order, shade) - shaded per face so boxes read as 3D without lights
        ((0, 1, 3, 2), 0.7), ((4, 6, 7, 5), 0.7),  # -x, +x
        ((0, 4, 5, 1), 0.55), ((2, 3, 7, 6), 1.0),  # -y, +y
        ((0, 2, 6, 4), 0.9), ((1, 5, 7, 3), 0.8),  # -z (front, toward viewer), +z
    ]
    pos_parts, col_parts, tri_parts = [], [], []
    col = np.asarray(colours)
    if col.dtype != np.uint8:
        col = np.clip(col * 255, 0, 255).astype(np.uint8)
    col = col[:, :3].astype(np.float32)
    for fi, (idx, shade) in enumerate(faces):
        quad = corners[list(idx)]  # [4, 3]
        pos_parts.append(c[:, None, :] + quad[None, :, :] * h[:, None, :])
        col_parts.append(np.repeat((col * shade)[:, None, :], 4, axis=1))
        base = (np.arange(n, dtype=np.uint32) * 24 + fi * 4)[:, None]
        tri_parts.append(np.concatenate([base + np.array([0, 1, 2], np.uint32), base + np.array([0, 2, 3], np.uint32)], axis=1))
    pos = np.stack(pos_parts, axis=1).reshape(-1, 3)  # [N, 6 faces, 4, 3] -> per box contiguous
    cols = np.stack(col_parts, axis=1).reshape(-1, 3).clip(0, 255).astype(np.uint8)
    tri = np.stack(tri_parts, axis=1).reshape(-1, 3)
    np_ = triangles(name, pos, tri, cols)
    np_.set_two_sided(True)
    return np_


def texture(image: np.ndarray, name: str = "panel", *, nearest: bool = False, mipmap: bool = False) -> Texture:
    """A Panda texture from an RGB/RGBA/grey uint8 image (row 0 at the top)."""
    im = np.asarray(image)
    if im.ndim == 2:
        im = np.repeat(im[:, :, None], 3, axis=2)
    im = np.ascontiguousarray(im[::-1])  # Panda's rows start at the bottom
    h, w, ch = im.shape
    tex = Texture(name)
    if ch == 4:
        tex.setup_2d_texture(w, h, Texture.T_unsigned_byte, Texture.F_rgba8)
        data = im[:, :, [2, 1, 0, 3]]  # Panda stores BGRA
    else:
        tex.setup_2d_texture(w, h, Texture.T_unsigned_byte, Texture.F_rgb8)
        data = im[:, :, [2, 1, 0]]
    tex.set_ram_image(np.ascontiguousarray(data).tobytes())
    if nearest:
        tex.set_magfilter(SamplerState.FT_nearest)
        tex.set_minfilter(SamplerState.FT_nearest)
    else:
        tex.set_magfilter(SamplerState.FT_linear)
        tex.set_minfilter(SamplerState.FT_linear_mipmap_linear if mipmap else SamplerState.FT_linear)
    tex.set_wrap_u(SamplerState.WM_clamp)
    tex.set_wrap_v(SamplerState.WM_clamp)
    return tex
