# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON_BOOT ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.segdep_installed

.PHONY: install demo demo-hydranet test clean-demo

$(PY):
	$(PYTHON_BOOT) -m venv $(VENV)

# Re-run only when the install recipe changes; pip itself skips what is already there.
$(STAMP): $(PY) setup.py tools/install_detectron2.py Makefile
	$(PY) -m pip install torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -e ".[test]"
	$(PY) tools/install_detectron2.py
	$(PY) -c "import segdep_d2, detectron2, panopticapi, open_clip, timm, cv2; print('segdep_d2 environment ready')"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) tools/demo.py

demo-hydranet: $(STAMP)
	$(PY) tools/demo.py --model hydranet

test: $(STAMP)
	$(PY) -m pytest -q tests

clean-demo:
	rm -rf output/demo
