import json

import numpy as np
import pytest

from segdep_d2.data.class_weights import (
    ClassWeightsError,
    class_frequency_weights,
    read_class_weights,
    write_class_weights,
)


def test_inverse_square_root_frequency_by_hand():
    # frequencies 0.64, 0.16, 0, 0.04, 0.16 -> f^-1/2 = 1.25, 2.5, -, 5, 2.5 -> mean 2.8125 over present classes
    weights = class_frequency_weights([64, 16, 0, 4, 16])
    np.testing.assert_allclose(weights, np.array([1.25, 2.5, 0.0, 5.0, 2.5]) / 2.8125)
    assert weights[weights > 0].mean() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no class"):
        class_frequency_weights([0, 0])


def test_write_then_read(tmp_path):
    path = str(tmp_path / "w.json")
    weights = write_class_weights(path, ["a", "b"], [1, 3], source="unit test")
    payload = json.load(open(path))
    assert payload["frequencies"] == [0.25, 0.75] and payload["source"] == "unit test"
    assert read_class_weights(path, num_classes=2, classes=["a", "b"]) == pytest.approx(weights.tolist(), abs=1e-6)
    with pytest.raises(ClassWeightsError, match="2 weights for a model with 3 classes"):
        read_class_weights(path, num_classes=3)
    with pytest.raises(ClassWeightsError, match="computed for classes"):
        read_class_weights(path, classes=["a", "c"])
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ClassWeightsError, match="bad.json"):
        read_class_weights(str(tmp_path / "bad.json"))
