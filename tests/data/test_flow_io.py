"""Virtual KITTI 2 optical-flow PNGs: encoder, decoder and file round trip against the dataset's own reader."""
import cv2
import numpy as np
import pytest

from segdep_d2.data.flow_io import (
    FlowFormatError,
    decode_vkitti2_flow,
    encode_vkitti2_flow,
    read_vkitti2_flow,
    vkitti2_flow_quantisation,
    write_vkitti2_flow,
)


def _official_reader(path):
    """The VKITTI2 reader as its documentation gives it (written out independently of flow_io)."""
    bgr = cv2.imread(path, -1)
    h, w = bgr.shape[:2]
    invalid = bgr[..., 0] == 0
    out_flow = 2.0 / (2 ** 16 - 1.0) * bgr[..., 2:0:-1].astype("f4") - 1
    out_flow[..., 0] *= w - 1
    out_flow[..., 1] *= h - 1
    out_flow[invalid] = 0
    return out_flow, invalid


def test_round_trip_is_exact_to_half_a_step(tmp_path):
    rng = np.random.default_rng(0)
    h, w = 37, 101
    flow = np.stack([rng.uniform(-(w - 1), w - 1, (h, w)), rng.uniform(-(h - 1), h - 1, (h, w))], -1)
    valid = rng.random((h, w)) > 0.2
    path = str(tmp_path / "sub" / "flow_00000.png")
    write_vkitti2_flow(path, flow, valid)

    decoded, decoded_valid = read_vkitti2_flow(path)
    assert decoded.dtype == np.float32 and decoded.shape == (h, w, 2)
    np.testing.assert_array_equal(decoded_valid, valid)
    qx, qy = vkitti2_flow_quantisation(h, w)
    assert qx == pytest.approx((w - 1) / 65535) and qy == pytest.approx((h - 1) / 65535)
    err = np.abs(decoded - flow)
    assert err[valid][:, 0].max() <= qx + 1e-4 and err[valid][:, 1].max() <= qy + 1e-4
    assert (decoded[~valid] == 0).all()

    official, invalid = _official_reader(path)
    np.testing.assert_array_equal(invalid, ~valid)
    np.testing.assert_allclose(official, decoded, atol=1e-4)


def test_channel_layout_matches_the_format(tmp_path):
    """B = valid flag, G = y, R = x; +(W-1) px stores 65535, -(W-1) stores 0, no motion stores 32768 (rounded)."""
    h, w = 4, 9
    flow = np.zeros((h, w, 2))
    flow[0, 0] = (w - 1, 0.0)
    flow[0, 1] = (-(w - 1), h - 1)
    path = str(tmp_path / "flow.png")
    write_vkitti2_flow(path, flow)
    bgr = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    assert bgr.dtype == np.uint16 and bgr.shape == (h, w, 3)
    assert (bgr[..., 0] > 0).all()
    assert tuple(bgr[0, 0, 1:]) == (32768, 65535)  # (G, R)
    assert tuple(bgr[0, 1, 1:]) == (65535, 0)
    assert tuple(bgr[2, 2, 1:]) == (32768, 32768)
    decoded, _ = decode_vkitti2_flow(bgr)
    np.testing.assert_allclose(decoded[0, 1], (-(w - 1), h - 1), atol=1e-4)


def test_unrepresentable_or_non_finite_flow_is_invalid():
    h, w = 3, 5
    flow = np.zeros((h, w, 2))
    flow[0, 0, 0] = w  # beyond W-1 px
    flow[0, 1, 1] = -h
    flow[0, 2] = np.nan
    bgr = encode_vkitti2_flow(flow)
    assert (bgr[0, :3] == 0).all()
    assert (bgr[1:, :, 0] > 0).all()
    _, valid = decode_vkitti2_flow(bgr)
    assert valid.sum() == h * w - 3


def test_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_vkitti2_flow(str(tmp_path / "missing.png"))
    eight_bit = str(tmp_path / "eight.png")
    cv2.imwrite(eight_bit, np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(FlowFormatError, match="eight.png.*16-bit 3-channel"):
        read_vkitti2_flow(eight_bit)
    gray = str(tmp_path / "gray16.png")
    cv2.imwrite(gray, np.zeros((4, 4), np.uint16))
    with pytest.raises(FlowFormatError, match="gray16.png"):
        read_vkitti2_flow(gray)
    with pytest.raises(ValueError, match=r"\(H, W, 2\)"):
        encode_vkitti2_flow(np.zeros((4, 4, 3)))
