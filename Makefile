# SPDX-License-Identifier: LGPL-2.1-or-later
# sysextpy: the two commands of the README, plus install and the linters.
PYTHON ?= /usr/bin/python3
VENV ?= .venv
PREFIX ?= /usr
DESTDIR ?=

.PHONY: demo test test-newest lint venv bench clean man prerequisites

# systemd-python is optional (journal logging): without libsystemd-dev and a compiler it cannot
# be built, and only a run that requires every tool fails for that.
venv: $(VENV)/.stamp
$(VENV)/.stamp: pyproject.toml | prerequisites
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q pytest pyfakefs hypothesis ruff mypy
	$(VENV)/bin/pip install -q systemd-python || { [ "$(SYSEXTPY_REQUIRE_TOOLS)" != 1 ] && \
		echo "venv: no systemd-python (building it needs the packages of tests/packages)"; }
	touch $@

# As root (a fresh machine, CI) the tests get every host tool they use: `make test` installs the
# missing packages of tests/packages, and a test whose tool is still missing fails instead of
# skipping (SYSEXTPY_REQUIRE_TOOLS=1). As another user nothing is installed and such tests skip.
SYSEXTPY_REQUIRE_TOOLS ?= $(if $(filter 0,$(shell id -u)),1,0)
export SYSEXTPY_REQUIRE_TOOLS

prerequisites:
	@sh tests/prerequisites.sh

# The main job on the built-in example, in a private mount namespace (needs root).
demo:
	unshare -m --propagation private $(PYTHON) tests/demo.py

# The whole test suite: unit and real-mount tests, linters, the dracut build and the QEMU boots
# (SYSEXTPY_E2E=0 leaves the boots out; their first run fetches a kernel and builds a root).
SYSEXTPY_E2E ?= 1
export SYSEXTPY_E2E
test: prerequisites venv
	$(VENV)/bin/python -m pytest -q
	$(MAKE) test-newest

# The unit and real-mount tests once more under the newest Python on the machine (pyenv puts
# several there) when it is newer than $(PYTHON): the package must run on what distributions
# ship next. Run once, in the pass above: the QEMU boots (the guests' own interpreters run the
# package there), the initramfs builds (they take the system's interpreter whatever runs pytest)
# and the long variants (`slow`: every errno at every syscall, 20,000 random trees).
NEWEST_PYTHON ?= $(shell sh tests/newest-python.sh $(PYTHON))
test-newest: prerequisites
	@if [ -z "$(NEWEST_PYTHON)" ]; then echo "test-newest: no Python newer than $(PYTHON)"; exit 0; fi; \
	$(MAKE) VENV=.venv-newest PYTHON=$(NEWEST_PYTHON) venv && \
	SYSEXTPY_E2E=0 .venv-newest/bin/python -m pytest -q -p no:cacheprovider -m "not slow" \
		--ignore=tests/test_dracut.py

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy sysextpy

bench: venv
	$(VENV)/bin/python bench/run.py

clean:
	rm -rf $(VENV) .venv-newest .pytest_cache .mypy_cache .ruff_cache
	rm -f $(MAN_PAGES)

# ---------------------------------------------------------------------------------------------
# make man: the manual pages, man/*.8, from their scdoc sources man/*.8.scd.
SCDOC ?= scdoc
MAN_SOURCES := $(wildcard man/*.8.scd)
MAN_PAGES := $(MAN_SOURCES:.scd=)
# Another name for a page, as "alias:page"; installed as a symbolic link.
MAN_ALIASES := sysextpy-sysroot.service.8:sysextpy.service.8
# The date in the pages' footers: the last commit's, so that a build is reproducible.
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null)

man: $(MAN_PAGES)

# scdoc's .nh comes before .TH, which turns hyphenation back on: option names would be split
# at made-up hyphens ("--always-re-fresh"), so it is repeated after .TH. The page is written to
# a temporary file first, so that a failed build leaves no empty page behind.
man/%.8: man/%.8.scd
	@command -v $(SCDOC) >/dev/null || { echo "$(SCDOC) not found: install scdoc (Debian package scdoc)" >&2; exit 1; }
	set -e; tmp=$@.$$$$.tmp; trap 'rm -f $$tmp $$tmp.2' EXIT; \
		$(if $(SOURCE_DATE_EPOCH),export SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH),unset SOURCE_DATE_EPOCH); \
		$(SCDOC) < $< > $$tmp; \
		sed '/^\.TH /a .nh' $$tmp > $$tmp.2; mv $$tmp.2 $@

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
MANDIR ?= $(PREFIX)/share/man

# The byte code is hash-checked, so it stays valid when an image builder resets file times.
install: man
	install -d $(DESTDIR)$(PYTHONDIR)/sysextpy $(DESTDIR)$(BINDIR) $(DESTDIR)$(SYSTEMDSYSTEMUNITDIR) \
		$(DESTDIR)$(SYSTEMDSYSTEMGENERATORDIR) $(DESTDIR)$(DRACUTMODULESDIR)/90sysextpy \
		$(DESTDIR)$(MANDIR)/man8
	install -m 0644 sysextpy/*.py $(DESTDIR)$(PYTHONDIR)/sysextpy/
	$(PYTHON) -I -m compileall -q --invalidation-mode checked-hash -d $(PYTHONDIR)/sysextpy \
		$(DESTDIR)$(PYTHONDIR)/sysextpy
	printf '%s\n' '#!$(PYTHON) -IS' \
		'"""sysextpy, as installed by make install: runs the package in $(PYTHONDIR)."""' \
		'import sys' '' 'sys.path.insert(0, "$(PYTHONDIR)")' \
		'from sysextpy.cli import run_as_process' '' \
		'if __name__ == "__main__":' '    run_as_process()' > $(DESTDIR)$(BINDIR)/sysextpy
	chmod 0755 $(DESTDIR)$(BINDIR)/sysextpy
	for unit in units/*.service; do \
		sed 's|/usr/bin/sysextpy|$(BINDIR)/sysextpy|g' $$unit > $(DESTDIR)$(SYSTEMDSYSTEMUNITDIR)/$${unit##*/}; \
		chmod 0644 $(DESTDIR)$(SYSTEMDSYSTEMUNITDIR)/$${unit##*/}; \
	done
	sed -e '1s|^#!.*|#!$(PYTHON) -IS|' -e 's|^PACKAGE_DIR = .*|PACKAGE_DIR = "$(PYTHONDIR)/sysextpy"|' \
		generators/sysextpy-generator > $(DESTDIR)$(SYSTEMDSYSTEMGENERATORDIR)/sysextpy-generator
	chmod 0755 $(DESTDIR)$(SYSTEMDSYSTEMGENERATORDIR)/sysextpy-generator
	install -m 0755 dracut/90sysextpy/module-setup.sh $(DESTDIR)$(DRACUTMODULESDIR)/90sysextpy/
	install -m 0644 dracut/90sysextpy/python-closure.py dracut/90sysextpy/python-bytecode.py dracut/90sysextpy/README \
		$(DESTDIR)$(DRACUTMODULESDIR)/90sysextpy/
	install -m 0644 $(MAN_PAGES) $(DESTDIR)$(MANDIR)/man8/
	for alias in $(MAN_ALIASES); do \
		ln -sfn $${alias#*:} $(DESTDIR)$(MANDIR)/man8/$${alias%%:*}; \
	done

# ---------------------------------------------------------------------------------------------
# make e2e: only the end-to-end boot tests (QEMU; needs root). The first run builds the kernel,
# root and initrd into /var/cache/sysextpy-e2e (SYSEXTPY_E2E_CACHE).
.PHONY: e2e
e2e: prerequisites venv
	SYSEXTPY_E2E=1 $(VENV)/bin/python -m pytest -q -m e2e tests/e2e
