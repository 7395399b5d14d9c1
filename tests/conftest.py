import os
import warnings

import pytest

# detectron2 and torch emit deprecation noise (pkg_resources, torch.jit.script) on import.
warnings.filterwarnings("ignore", category=UserWarning, module="detectron2")
warnings.filterwarnings("ignore", category=FutureWarning)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_SAMPLES = os.path.join(os.path.dirname(REPO_ROOT), "shared", "real_samples")


@pytest.fixture(scope="session")
def real_samples():
    """../shared/real_samples, read in place; tests that need it skip where it is absent."""
    if not os.path.isdir(REAL_SAMPLES):
        pytest.skip("../shared/real_samples is not present in this checkout")
    return REAL_SAMPLES
