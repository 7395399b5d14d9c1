"""Appearance pass: colour every pixel of a G-buffer for a VKITTI2 appearance variation.

Only appearance (never labels or depth) depends on the variation. The frame's random generator is used only
for rain streaks and sensor noise, in that order.
"""

from __future__ import annotations

import numpy as np

from .constants import PRIM_GROUND, PRIM_HOOD, PRIM_SKY
from .ground import ground_colors
from .layout import SceneLayout
from .materials import material_colors, primitive_columns
from .noise import value_noise
from .raycast import SPHERE_FACE, GBuffer

APPEARANCE = {
    # gain, tint, ambient, diffuse, saturation, haze distance (m), fog distance (m) or 0,
    # sky zenith / horizon colours, cloud cover, sun elevation override (deg) + azimuth offset, rain
    "clone": dict(gain=1.0, tint=(1.0, 1.0, 1.0), amb=0.5, dif=0.6, sat=1.0, haze=900.0, fog=0.0,
                  top=(0.30, 0.52, 0.85), hor=(0.74, 0.84, 0.94), clouds=0.35, sun=None, rain=False),
    "morning": dict(gain=0.95, tint=(1.08, 0.98, 0.84), amb=0.42, dif=0.75, sat=1.05, haze=450.0, fog=0.0,
                    top=(0.42, 0.58, 0.82), hor=(0.98, 0.84, 0.66), clouds=0.25, sun=(14.0, 1.2), rain=False),
    "sunset": dict(gain=0.78, tint=(1.2, 0.82, 0.6), amb=0.38, dif=0.7, sat=1.1, haze=500.0, fog=0.0,
                   top=(0.25, 0.27, 0.5), hor=(1.0, 0.58, 0.3), clouds=0.3, sun=(5.0, 3.1), rain=False),
    "overcast": dict(gain=0.92, tint=(0.97, 1.0, 1.04), amb=0.85, dif=0.12, sat=0.55, haze=450.0, fog=0.0,
                     top=(0.58, 0.6, 0.64), hor=(0.78, 0.79, 0.8), clouds=0.9, sun=None, rain=False),
    "fog": dict(gain=0.95, tint=(1.0, 1.0, 1.02), amb=0.85, dif=0.1, sat=0.6, haze=450.0, fog=45.0,
                top=(0.74, 0.75, 0.77), hor=(0.76, 0.77, 0.78), clouds=0.0, sun=None, rain=False),
    "rain": dict(gain=0.7, tint=(0.95, 0.98, 1.05), amb=0.8, dif=0.1, sat=0.6, haze=220.0, fog=0.0,
                 top=(0.42, 0.44, 0.48), hor=(0.62, 0.64, 0.67), clouds=0.95, sun=None, rain=True),
}


def appearance(variation: str) -> dict:
    """Appearance settings of a variation; geometry variations (N-deg-left/right) look like "clone"."""
    return APPEARANCE.get(variation, APPEARANCE["clone"])


class _Pixels:
    """Flattened per-pixel views of a G-buffer, with the world hit points."""

    def __init__(self, gbuffer: GBuffer):
        self.prim_index = gbuffer.prim_index.reshape(-1)
        self.face = gbuffer.face.reshape(-1)
        self.dx, self.dy, self.dz = (c.reshape(-1) for c in gbuffer.rays.d)
        depth = gbuffer.depth.reshape(-1)
        self.depth = np.where(np.isfinite(depth), depth, 0.0)  # sky pixels sit at the camera
        C = gbuffer.C
        self.X, self.Y, self.Z = C[0] + self.depth * self.dx, C[1] + self.depth * self.dy, C[2] + self.depth * self.dz
        self.norm2 = gbuffer.rays.norm2.reshape(-1)


def shade(layout: SceneLayout, gbuffer: GBuffer, variation: str, rng: np.random.Generator) -> np.ndarray:
    """Colour every pixel from the G-buffer; only appearance (never labels or depth) depends on variation."""
    settings = appearance(variation)
    height, width = gbuffer.depth.shape
    pixels = _Pixels(gbuffer)
    colors = np.zeros((height * width, 3), np.float32)

    sun = _sun_direction(layout, settings)
    face_lambert = _face_lambert(sun)
    ambient, diffuse = np.float32(settings["amb"]), np.float32(settings["dif"])
    ground_light = ambient + diffuse * face_lambert[3]  # the ground faces up

    _shade_ground(layout, pixels, settings, ground_light, colors)
    _shade_primitives(gbuffer, pixels, sun, face_lambert, ambient, diffuse, colors)
    _shade_hood(gbuffer, pixels, ground_light, colors)
    _add_aerial_perspective(pixels, settings, colors)
    _shade_sky(layout, gbuffer, pixels, settings, colors)

    colors = _grade(colors, settings)
    image = colors.reshape(height, width, 3)
    if settings["rain"]:
        image = _rain_streaks(image, rng)
    return _expose(image, gbuffer.rays.vignette, rng)


def _sun_direction(layout: SceneLayout, settings: dict) -> np.ndarray:
    """The layout's sun, or the variation's low sun (elevation override, azimuth turned by an offset)."""
    sun = layout.sun
    if settings["sun"] is not None:
        elevation, azimuth_offset = np.deg2rad(settings["sun"][0]), settings["sun"][1]
        azimuth = np.arctan2(sun[0], sun[2]) + azimuth_offset
        sun = np.array([np.cos(elevation) * np.sin(azimuth), -np.sin(elevation), np.cos(elevation) * np.cos(azimuth)])
    return sun


def _face_lambert(sun) -> np.ndarray:
    """Lambert term per box face code (axis * 2 + entered-along-+axis => normal -axis); spheres get 0 here."""
    return np.clip(np.array([sun[0], -sun[0], sun[1], -sun[1], sun[2], -sun[2], 0.0], np.float32), 0, None)


def _shade_ground(layout: SceneLayout, pixels: _Pixels, settings: dict, ground_light, colors):
    ground = np.flatnonzero(pixels.prim_index == PRIM_GROUND)
    if not ground.size:
        return
    X, Z = pixels.X[ground], pixels.Z[ground]
    color = ground_colors(layout, X, Z) * ground_light
    if settings["rain"]:  # wet streets reflect the sky
        puddle = value_noise(X * 0.7, Z * 0.35, salt=9)
        color = color * 0.55 + (0.12 + 0.25 * puddle)[:, None] * np.array(settings["hor"], np.float32)
    colors[ground] = color


def _shade_primitives(gbuffer: GBuffer, pixels: _Pixels, sun, face_lambert, ambient, diffuse, colors):
    on_prim = np.flatnonzero(pixels.prim_index >= 0)
    if not on_prim.size:
        return
    prims = gbuffer.prims
    columns = primitive_columns(prims)
    material_of_pixel = prims.material[pixels.prim_index[on_prim]]
    for material in np.unique(material_of_pixel):
        index = on_prim[material_of_pixel == material]
        face = pixels.face[index]
        color, sphere_normals, emissive = material_colors(
            int(material), pixels.X[index].astype(np.float32), pixels.Y[index].astype(np.float32),
            pixels.Z[index].astype(np.float32), face, prims, columns, pixels.prim_index[index])
        lambert = face_lambert[face]
        if sphere_normals is not None:
            on_sphere = face == SPHERE_FACE
            lambert[on_sphere] = np.clip(sphere_normals[on_sphere] @ sun.astype(np.float32), 0, None)
        light = ambient + diffuse * lambert
        if emissive is not None:
            light[emissive] = 1.0  # lamps keep their colour
        colors[index] = color * light[:, None]


def _shade_hood(gbuffer: GBuffer, pixels: _Pixels, ground_light, colors):
    """The bonnet: dark paint mirroring the sky."""
    hood = np.flatnonzero(pixels.prim_index == PRIM_HOOD)
    if not hood.size:
        return
    z_rel = pixels.Z[hood] - gbuffer.C[2]
    color = (0.1 + 0.12 * np.clip(z_rel / 2.4, 0, 1))[:, None] * np.array([1.0, 1.0, 1.1], np.float32)
    color += 0.08 * value_noise(pixels.X[hood] * 3, z_rel * 3, salt=5)[:, None]
    colors[hood] = color * ground_light


def _add_aerial_perspective(pixels: _Pixels, settings: dict, colors):
    """Haze (and fog) blend towards the horizon colour by Euclidean distance."""
    horizon = np.array(settings["hor"], np.float32)
    distance = (pixels.depth * np.sqrt(pixels.norm2)).astype(np.float32)
    amount = 1.0 - np.exp(-distance / np.float32(settings["haze"]))
    if settings["fog"] > 0:
        amount = 1.0 - (1.0 - amount) * np.exp(-distance / np.float32(settings["fog"]))
    colors += (horizon - colors) * amount[:, None]


def _shade_sky(layout: SceneLayout, gbuffer: GBuffer, pixels: _Pixels, settings: dict, colors):
    """Gradient by elevation, clouds on a plane 1.5 km up (they stay put in the world)."""
    sky_index = np.flatnonzero(pixels.prim_index == PRIM_SKY)
    if not sky_index.size:
        return
    dx, dy, dz = pixels.dx[sky_index], pixels.dy[sky_index], pixels.dz[sky_index]
    horizon = np.array(settings["hor"], np.float32)
    elevation = np.clip(-dy / np.sqrt(pixels.norm2[sky_index]), 0.0, 1.0)
    t = (np.clip(elevation / 0.6, 0, 1) ** 0.6).astype(np.float32)[:, None]
    zenith = np.array(settings["top"], np.float32)
    sky = horizon * (1 - t) + zenith * t
    if settings["clouds"] > 0:
        distance = 1500.0 / np.maximum(-dy, 0.02)
        cloud_u, cloud_v = (gbuffer.C[0] + dx * distance) / 500.0, (gbuffer.C[2] + dz * distance) / 500.0
        density = value_noise(cloud_u.astype(np.float32), cloud_v.astype(np.float32), salt=layout.seed + 11)
        # Thin clouds are skipped by the threshold; clouds fade out towards the horizon.
        amount = (np.clip((density - (1.0 - settings["clouds"]) * 0.75) * 2.5, 0, 1)
                  * np.clip(elevation * 10, 0, 1))[:, None]
        cloud = np.clip(0.55 + 0.48 * density[:, None] * horizon, 0, 1)
        sky = sky * (1 - amount) + cloud * amount
    if settings["fog"] > 0:
        sky = sky * 0.1 + horizon * 0.9
    colors[sky_index] = sky


def _grade(colors, settings: dict):
    """Tint, gain and saturation of the variation."""
    colors *= np.array(settings["tint"], np.float32) * np.float32(settings["gain"])
    if settings["sat"] != 1.0:
        grey = colors.mean(1, keepdims=True)
        colors = grey + np.float32(settings["sat"]) * (colors - grey)
    return colors


def _expose(image, vignette, rng: np.random.Generator) -> np.ndarray:
    """To 8 bits; vignetting and sensor noise keep flat regions from being a single colour."""
    image = image * (vignette[..., None] * np.float32(255.0))
    image += rng.integers(-3, 4, image.shape, dtype=np.int8)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _rain_streaks(image, rng: np.random.Generator):
    """Short bright slanted streaks blended over the image."""
    height, width, _ = image.shape
    layer = np.zeros((height, width), np.float32)
    count = max(1, height * width // 350)
    length = max(3, height // 14)
    y0 = rng.integers(-length, height, count)
    x0 = rng.integers(0, width, count)
    for k in range(length):  # one step along all streaks at once
        y, x = y0 + k, x0 + int(k * 0.3)
        inside = (y >= 0) & (y < height) & (x < width)
        np.add.at(layer, (y[inside], x[inside]), 0.18)
    layer = np.clip(layer, 0, 0.5)[..., None]
    return image * (1 - layer) + 0.85 * layer
