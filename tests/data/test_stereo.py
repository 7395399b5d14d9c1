import cv2
import numpy as np
import pytest

from segdep_d2.data.stereo import estimate_disparity_scale, estimate_disparity_scale_from_files

BANDS = (8, 16, 24)  # px of disparity of three fronto-parallel planes, left to right


def _stereo_pair(height=96, width=240, bands=BANDS, seed=0):
    """A rectified pair of random texture: the left image is three vertical bands, each a plane whose
    points appear ``d`` px further left in the right image (right[y, x - d] = left[y, x]); nearer planes
    overwrite farther ones, and what no plane covers in the right image is other random texture."""
    rng = np.random.default_rng(seed)
    left = np.zeros((height, width), np.uint8)
    right = rng.integers(0, 256, (height, width)).astype(np.uint8)
    disparity = np.zeros((height, width))
    edges = np.linspace(0, width, len(bands) + 1).astype(int)
    for (x0, x1), d in sorted(zip(zip(edges[:-1], edges[1:]), bands), key=lambda band: band[1]):
        texture = cv2.GaussianBlur(rng.integers(0, 256, (height, x1 - x0)).astype(np.uint8), (0, 0), 0.8)
        left[:, x0:x1] = texture
        disparity[:, x0:x1] = d
        start = max(0, x0 - d)
        right[:, start:x1 - d] = texture[:, start - (x0 - d):]
    return left, right, disparity


@pytest.mark.parametrize("scale", [100.0, 256.0])
def test_scale_of_a_synthetic_pair(scale):
    left, right, disparity = _stereo_pair()
    disp16 = np.rint(disparity * scale).astype(np.uint16)
    result = estimate_disparity_scale(left, right, disp16)
    assert result["scale"] == pytest.approx(scale, rel=0.03)
    assert result["iqr"][0] <= result["scale"] <= result["iqr"][1]
    assert result["iqr"][1] - result["iqr"][0] < 0.05 * scale
    assert result["num_pixels"] > 0.5 * left.size  # every band is matched
    settings = result["matcher"]
    # numDisparities covers disp16.max() / min_scale (32) px, a multiple of 16
    assert settings["num_disparities"] % 16 == 0 and settings["num_disparities"] >= 24 * scale / 32
    assert settings["downscale"] == 1.0

    # downscaled matching (colour input, a confidence mask): disparities are rescaled to full-resolution px
    rgb = [np.repeat(image[:, :, None], 3, axis=2) for image in (left, right)]
    confidence = np.full(disp16.shape, 255, np.uint8)
    confidence[:, :40] = 0
    small = estimate_disparity_scale(*rgb, disp16, confidence, max_width=120)
    assert small["matcher"]["downscale"] == 0.5 and small["matcher"]["working_size"] == (120, 48)
    assert small["scale"] == pytest.approx(scale, rel=0.03)


def test_too_few_pixels_is_an_error():
    left, right, disparity = _stereo_pair()
    disp16 = np.zeros(disparity.shape, np.uint16)
    disp16[40:42, 100:110] = 1600  # 20 stored pixels
    with pytest.raises(ValueError, match=r"only \d+ pixels .*need at least 200"):
        estimate_disparity_scale(left, right, disp16)
    # swapped views: the matcher finds (almost) nothing with positive disparity
    with pytest.raises(ValueError, match=r"only \d+ pixels"):
        estimate_disparity_scale(right, left, np.rint(disparity * 100).astype(np.uint16), min_pixels=5000)
    with pytest.raises(ValueError, match="no valid"):
        estimate_disparity_scale(left, right, np.zeros(disparity.shape, np.uint16))
    with pytest.raises(ValueError, match="same H x W"):
        estimate_disparity_scale(left, right[:, :-1], disp16)


def test_from_files(tmp_path):
    left, right, disparity = _stereo_pair()
    paths = {name: str(tmp_path / f"{name}.png") for name in ("left", "right", "disp16", "confidence")}
    cv2.imwrite(paths["left"], left)
    cv2.imwrite(paths["right"], right)
    cv2.imwrite(paths["disp16"], np.rint(disparity * 100).astype(np.uint16))
    cv2.imwrite(paths["confidence"], np.full(left.shape, 255, np.uint8))
    result = estimate_disparity_scale_from_files(paths["left"], paths["right"], paths["disp16"], paths["confidence"])
    assert result["scale"] == pytest.approx(100.0, rel=0.03) and result["files"]["disp16"] == paths["disp16"]
    cv2.imwrite(paths["disp16"], np.rint(disparity).astype(np.uint8))
    with pytest.raises(ValueError, match=r"disp16\.png.*16-bit"):
        estimate_disparity_scale_from_files(paths["left"], paths["right"], paths["disp16"])
