# sysextpy: the two commands of the README, plus install and the linters.
PYTHON ?= /usr/bin/python3
VENV ?= .venv
PREFIX ?= /usr
DESTDIR ?=

.PHONY: demo test lint venv bench clean

venv: $(VENV)/.stamp
$(VENV)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q pytest pyfakefs hypothesis ruff mypy systemd-python
	touch $@

# The main job on the built-in example, in a private mount namespace (needs root).
demo:
	unshare -m --propagation private $(PYTHON) tests/demo.py

# The whole test suite: unit and real-mount tests, linters, the dracut build and the QEMU boots
# (SYSEXTPY_E2E=0 leaves the boots out; their first run fetches a kernel and builds a root).
SYSEXTPY_E2E ?= 1
export SYSEXTPY_E2E
test: venv
	@if [ "$(SYSEXTPY_E2E)" = 1 ]; then $(PYTHON) tests/e2e/harness.py tools; fi
	$(VENV)/bin/python -m pytest -q

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy sysextpy

bench: venv
	$(VENV)/bin/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# ---------------------------------------------------------------------------------------------
# make install DESTDIR=... PREFIX=/usr: the package, a launcher, the units, the generator and the
# dracut module, where systemd and dracut look for them. Every directory can be overridden.
.PHONY: install
PKG_CONFIG ?= pkg-config
BINDIR ?= $(PREFIX)/bin
# The launcher (python3 -IS: no site, no environment) puts this directory first on sys.path,
# so any directory works, not only site ones.
PYTHONDIR ?= $(PREFIX)/lib/python3/dist-packages
SYSTEMDSYSTEMUNITDIR ?= $(or $(shell $(PKG_CONFIG) --variable=systemdsystemunitdir systemd 2>/dev/null),/usr/lib/systemd/system)
SYSTEMDSYSTEMGENERATORDIR ?= $(or $(shell $(PKG_CONFIG) --variable=systemdsystemgeneratordir systemd 2>/dev/null),/usr/lib/systemd/system-generators)
DRACUTMODULESDIR ?= $(PREFIX)/lib/dracut/modules.d

# The byte code is hash-checked, so it stays valid when an image builder resets file times.
install:
	install -d $(DESTDIR)$(PYTHONDIR)/sysextpy $(DESTDIR)$(BINDIR) $(DESTDIR)$(SYSTEMDSYSTEMUNITDIR) \
		$(DESTDIR)$(SYSTEMDSYSTEMGENERATORDIR) $(DESTDIR)$(DRACUTMODULESDIR)/90sysextpy
	install -m 0644 sysextpy/*.py $(DESTDIR)$(PYTHONDIR)/sysextpy/
	$(PYTHON) -I -m compileall -q --invalidation-mode checked-hash -d $(PYTHONDIR)/sysextpy \
		$(DESTDIR)$(PYTHONDIR)/sysextpy
	printf '%s\n' '#!$(PYTHON) -IS' \
		'"""sysextpy, as installed by make install: runs the package in $(PYTHONDIR)."""' \
		'import sys' '' 'sys.path.insert(0, "$(PYTHONDIR)")' \
		'from sysextpy.__main__ import main' '' \
		'if __name__ == "__main__":' '    sys.exit(main())' > $(DESTDIR)$(BINDIR)/sysextpy
	chmod 0755 $(DESTDIR)$(BINDIR)/sysextpy
	for unit in units/*.service; do \
		sed 's|/usr/bin/sysextpy|$(BINDIR)/sysextpy|g' $$unit > $(DESTDIR)$(SYSTEMDSYSTEMUNITDIR)/$${unit##*/}; \
		chmod 0644 $(DESTDIR)$(SYSTEMDSYSTEMUNITDIR)/$${unit##*/}; \
	done
	sed -e '1s|^#!.*|#!$(PYTHON) -IS|' -e 's|^PACKAGE_DIR = .*|PACKAGE_DIR = "$(PYTHONDIR)/sysextpy"|' \
		generators/sysextpy-generator > $(DESTDIR)$(SYSTEMDSYSTEMGENERATORDIR)/sysextpy-generator
	chmod 0755 $(DESTDIR)$(SYSTEMDSYSTEMGENERATORDIR)/sysextpy-generator
	install -m 0755 dracut/90sysextpy/module-setup.sh $(DESTDIR)$(DRACUTMODULESDIR)/90sysextpy/
	install -m 0644 dracut/90sysextpy/python-closure.py dracut/90sysextpy/README \
		$(DESTDIR)$(DRACUTMODULESDIR)/90sysextpy/

# ---------------------------------------------------------------------------------------------
# make e2e: only the end-to-end boot tests (QEMU; needs root). The first run installs the tools
# and builds the kernel, root and initrd into /var/cache/sysextpy-e2e (SYSEXTPY_E2E_CACHE).
.PHONY: e2e
e2e: venv
	$(PYTHON) tests/e2e/harness.py tools
	SYSEXTPY_E2E=1 $(VENV)/bin/python -m pytest -q -m e2e tests/e2e
