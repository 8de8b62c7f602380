# blockctl - live and offline block operations on VM disk images
# SPDX-License-Identifier: GPL-2.0-or-later

VERSION = 0.1.0
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
MANDIR ?= $(PREFIX)/share/man
SYSTEMDDIR ?= $(PREFIX)/lib/systemd/system
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
DESTDIR ?=

BUILD ?= build
CC ?= cc
PKGS = zlib libzstd libnbd json-c
CFLAGS ?= -O2 -g
WARN = -Wall -Wextra -Wshadow -Wvla -Wformat=2 -Wstrict-prototypes \
       -Wmissing-prototypes -Wold-style-definition -Wpointer-arith -Wundef \
       -Wno-missing-field-initializers -Wno-format-nonliteral -Wframe-larger-than=16384
ifeq ($(WERROR),1)
WARN += -Werror
endif
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
# libnbd is loaded with dlopen when an NBD image is opened (formats/nbd.c)
PKG_LIBS := $(shell pkg-config --libs zlib libzstd json-c 2>/dev/null || echo -lz -lzstd -ljson-c) -ldl
ALL_CPPFLAGS = -I. -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -DBLOCKCTL_VERSION=\"$(VERSION)\" $(CPPFLAGS)
ALL_CFLAGS = -std=gnu11 -pthread $(WARN) $(PKG_CFLAGS) $(CFLAGS)
ALL_LDFLAGS = -pthread -Wl,--as-needed $(LDFLAGS)
LIBS = $(PKG_LIBS)

LIB_SRCS = $(wildcard lib/*.c lib/*/*.c) $(wildcard formats/*.c) $(wildcard formats/qcow2/*.c)
CMD_SRCS = $(wildcard cmd/*.c cmd/shared/*.c)
LIB_OBJS = $(LIB_SRCS:%.c=$(BUILD)/%.o)
CMD_OBJS = $(CMD_SRCS:%.c=$(BUILD)/%.o)
UNIT_SRCS = $(wildcard tests/unit/test-*.c)
UNIT_BINS = $(UNIT_SRCS:tests/unit/%.c=$(BUILD)/tests/unit/%)
TOOL_SRCS = $(wildcard tests/tools/*.c)
TOOL_BINS = $(TOOL_SRCS:tests/tools/%.c=$(BUILD)/tests/tools/%)
PODS = $(wildcard man/*.pod)
MANS = $(PODS:man/%.pod=$(BUILD)/man/%)
BIN = $(BUILD)/blockctl

.PHONY: all deps test-deps check unit test-tools demo install uninstall asan tsan fuzz bench clean man

all: blockctl man

# The binary lives at the root; $(BUILD) keeps the objects.
blockctl: $(BIN)
	@if [ "$(BUILD)" = build ]; then cp -f $(BIN) blockctl; fi

$(BIN): $(LIB_OBJS) $(CMD_OBJS)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(LIBS)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CPPFLAGS) $(ALL_CFLAGS) -MMD -MP -c -o $@ $<

$(BUILD)/tests/unit/%: tests/unit/%.c $(LIB_OBJS) tests/unit/tap.h
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CPPFLAGS) $(ALL_CFLAGS) -o $@ $< $(LIB_OBJS) $(ALL_LDFLAGS) $(UNIT_LDFLAGS) $(LIBS) $(UNIT_LIBS)

# test-nbdsrv: libnbd as the client; the disk's dirty bitmaps faked
$(BUILD)/tests/unit/test-nbdsrv: UNIT_LIBS = -lnbd
$(BUILD)/tests/unit/test-nbdsrv: UNIT_LDFLAGS = -Wl,--wrap=blk_bitmap_names -Wl,--wrap=blk_bitmap_status

# helper programs the test suites run (tests/tools/); nbd-writer is a libnbd client
$(BUILD)/tests/tools/nbd-writer: LIBS += -lnbd

$(BUILD)/tests/tools/%: tests/tools/%.c $(LIB_OBJS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CPPFLAGS) $(ALL_CFLAGS) -o $@ $< $(LIB_OBJS) $(ALL_LDFLAGS) $(LIBS)

man: $(MANS)
$(BUILD)/man/%: man/%.pod
	@mkdir -p $(dir $@)
	pod2man --utf8 --section=$(subst .,,$(suffix $*)) --center="blockctl" \
	    --release="blockctl $(VERSION)" --name=$(basename $*) $< $@

-include $(LIB_OBJS:.o=.d) $(CMD_OBJS:.o=.d)

deps:
	@scripts/deps.sh build

test-deps:
	@scripts/deps.sh test

unit: $(UNIT_BINS) test-tools

test-tools: $(TOOL_BINS)

check: deps test-deps
	@$(MAKE) --no-print-directory all unit
	@PROG=$(CURDIR)/$(if $(filter build,$(BUILD)),blockctl,$(BIN)) BUILD=$(BUILD) tests/run.sh

demo: deps test-deps
	@$(MAKE) --no-print-directory all
	@scripts/demo.sh $(CURDIR)/blockctl

install: all
	install -Dm755 blockctl $(DESTDIR)$(BINDIR)/blockctl
	for c in $$(./blockctl --list-commands); do \
	    ln -sf blockctl $(DESTDIR)$(BINDIR)/blockctl-$$c; \
	done
	for p in $(MANS); do \
	    n=$$(basename $$p); s=$${n##*.}; \
	    install -Dm644 $$p $(DESTDIR)$(MANDIR)/man$$s/$$n; \
	done
	install -d $(DESTDIR)$(SYSTEMDDIR)
	sed 's|/usr/local/bin/blockctl|$(BINDIR)/blockctl|' dist/blockctl-agent@.service \
	    >$(DESTDIR)$(SYSTEMDDIR)/blockctl-agent@.service
	chmod 644 $(DESTDIR)$(SYSTEMDDIR)/blockctl-agent@.service
	sed 's|/usr/local/bin/blockctl|$(BINDIR)/blockctl|' dist/blockctl-backup \
	    >$(DESTDIR)$(BINDIR)/blockctl-backup
	chmod 755 $(DESTDIR)$(BINDIR)/blockctl-backup
	for u in blockctl-backup@.service blockctl-backup@.timer; do \
	    sed 's|/usr/local/bin/blockctl|$(BINDIR)/blockctl|' dist/$$u >$(DESTDIR)$(SYSTEMDDIR)/$$u; \
	    chmod 644 $(DESTDIR)$(SYSTEMDDIR)/$$u; \
	done
	install -Dm644 dist/bash-completion/blockctl $(DESTDIR)$(BASHCOMPDIR)/blockctl
	for c in $$(./blockctl --list-commands); do \
	    ln -sf blockctl $(DESTDIR)$(BASHCOMPDIR)/blockctl-$$c; \
	done

uninstall:
	for c in $$(./blockctl --list-commands); do rm -f $(DESTDIR)$(BINDIR)/blockctl-$$c; done
	rm -f $(DESTDIR)$(BINDIR)/blockctl
	for p in $(MANS); do n=$$(basename $$p); s=$${n##*.}; rm -f $(DESTDIR)$(MANDIR)/man$$s/$$n; done
	rm -f $(DESTDIR)$(SYSTEMDDIR)/blockctl-agent@.service
	rm -f $(DESTDIR)$(BINDIR)/blockctl-backup $(DESTDIR)$(SYSTEMDDIR)/blockctl-backup@.service \
	    $(DESTDIR)$(SYSTEMDDIR)/blockctl-backup@.timer $(DESTDIR)$(BASHCOMPDIR)/blockctl
	for c in $$(./blockctl --list-commands); do rm -f $(DESTDIR)$(BASHCOMPDIR)/blockctl-$$c; done

ASAN_FLAGS = -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all
asan: deps test-deps
	@$(MAKE) --no-print-directory BUILD=build-asan CFLAGS="$(ASAN_FLAGS)" \
	    LDFLAGS="-fsanitize=address,undefined" build-asan/blockctl unit man
	@ASAN_OPTIONS=abort_on_error=1:detect_leaks=1 \
	    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	    PROG=$(CURDIR)/build-asan/blockctl BUILD=build-asan tests/run.sh

# ThreadSanitizer: the unit tests and the NBD server / agent suites
TSAN_FLAGS = -O1 -g -fsanitize=thread
tsan: deps test-deps
	@$(MAKE) --no-print-directory BUILD=build-tsan CFLAGS="$(TSAN_FLAGS)" \
	    LDFLAGS="-fsanitize=thread" build-tsan/blockctl unit
	@rm -rf build-tsan/reports && mkdir -p build-tsan/reports
	@TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1:log_path=$(CURDIR)/build-tsan/reports/tsan \
	    PROG=$(CURDIR)/build-tsan/blockctl BUILD=build-tsan \
	    ONLY='build-tsan/tests/unit/|nbdsrv|qmp|agent' tests/run.sh; rc=$$?; \
	if ls build-tsan/reports/tsan.* >/dev/null 2>&1; then \
	    cat build-tsan/reports/tsan.*; echo "tsan: reports above (a daemonized agent's too)"; exit 1; fi; \
	exit $$rc

FUZZ_FLAGS = -O1 -g -fsanitize=fuzzer,address,undefined
fuzz: deps
	@scripts/fuzz.sh

# The agent's long runs (AGENT_FULL=1: longer writers, more snapshots,
# kill -9 at several moments), beside the samples make check runs
.PHONY: agent-full
agent-full: deps test-deps
	@$(MAKE) --no-print-directory all unit
	@AGENT_FULL=1 ONLY='agent-' tests/run.sh

# A real guest end to end (tests/interop/guest.bats, also part of make
# check): a TCG Linux guest on the agent's NBD export, live jobs under it
.PHONY: guest-test
guest-test: deps test-deps
	@scripts/deps.sh guest
	@$(MAKE) --no-print-directory all
	@PROG=$(CURDIR)/$(if $(filter build,$(BUILD)),blockctl,$(BIN)) BUILD=$(BUILD) \
	    ONLY='interop/guest\.bats' tests/run.sh

# The whole fault matrix (tests/crash/lib.bash, and live.bash for the
# agent killed under a guest's writes): every point, every operation;
# prints a table per operation and every failure
.PHONY: crash
crash: deps test-deps
	@$(MAKE) --no-print-directory all
	@PROG=$(CURDIR)/$(if $(filter build,$(BUILD)),blockctl,$(BIN)) tests/crash/matrix.sh

# dist/blockctl-backup for 300 nights, offline and live (make check runs
# 300 offline and 30 live)
.PHONY: backup-test
backup-test: deps test-deps
	@$(MAKE) --no-print-directory all
	@BACKUP_LIVE_NIGHTS=300 PROG=$(CURDIR)/blockctl bats --tap tests/interop/backup.bats

bench: deps test-deps
	@$(MAKE) --no-print-directory all test-tools
	@tests/bench/run.sh $(CURDIR)/blockctl

clean:
	rm -rf build build-asan build-tsan build-fuzz blockctl
