# contimg: the two promises of the README.
#   make demo   set up, simulate a small night and process it on a private local cluster
#   make test   set up and run the tests
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup demo test test-fast test-long redis wsclean aoflagger chromium clean

setup: $(VENV)/.installed redis wsclean aoflagger

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

# redis-server from Debian's packages when it is missing
redis:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server with apt"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq redis-server >/dev/null; }

# wsclean (imaging.backend = "wsclean"; its tests) from Debian's packages when it is missing
wsclean:
	@command -v wsclean >/dev/null 2>&1 || { \
	  echo "installing wsclean with apt"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq wsclean >/dev/null; }

# aoflagger (flagging.strategy = "aoflagger"; its tests) from Debian's packages when it is missing
aoflagger:
	@command -v aoflagger >/dev/null 2>&1 || { \
	  echo "installing aoflagger with apt"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq aoflagger >/dev/null; }

# chromium (the tests that open the weblog in a headless browser) from Debian's packages when it is missing
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  echo "installing chromium with apt"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }

demo: setup
	$(VENV)/bin/contimg demo --dir demo

test: setup chromium
	$(PY) -m pytest -ra --durations=30 -m "not long"

# the tests marked long (tens of minutes: 20 CASA-imaged epochs of the survey)
test-long: setup
	$(PY) -m pytest -ra -m long

test-fast: setup
	$(PY) -m pytest -ra -m "not slow and not long"

clean:
	rm -rf demo .pytest_cache
