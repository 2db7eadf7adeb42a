# strata — top-level build.  `make` builds build/{stratafs,mkimage,strata}.
# Sources are picked up by directory, so adding a .c file needs no edit here.

CC      ?= cc
PREFIX  ?= /usr/local
BUILD   ?= build
SAN     ?=
PKGS    := fuse3 liblz4 libxxhash libzstd zlib liblzma libarchive json-c sqlite3
CFLAGS  ?= -O2 -g
CFLAGS  += -std=gnu11 -Wall -Wextra -Werror -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 \
           -Ifs -Ifs/common -Idriver -MMD -MP $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS  += $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lattr -lacl -lpthread -lm

ifeq ($(SAN),1)
CFLAGS  += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=address,undefined
BUILD   := build-san
endif

LIB_SRC      := $(wildcard fs/common/*.c fs/squashfs/*.c fs/layer/*.c fs/overlay/*.c)
STRATAFS_SRC := $(wildcard fs/stratafs*.c fs/passthrough.c fs/prefetch.c fs/dirahead.c)
MKIMAGE_SRC  := $(wildcard mkimage/*.c)
DRIVER_SRC   := $(filter-out driver/main.c,$(wildcard driver/*.c))

obj = $(patsubst %.c,$(BUILD)/obj/%.o,$(1))

LIB      := $(BUILD)/libstrata.a
DRVLIB   := $(BUILD)/libstrata-driver.a
BINS     := $(BUILD)/stratafs $(BUILD)/mkimage $(BUILD)/strata

.PHONY: all clean check check-san demo bench bench-quick install deps fuzz
all: $(BINS)

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

$(LIB): $(call obj,$(LIB_SRC))
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(DRVLIB): $(call obj,$(DRIVER_SRC))
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/stratafs: $(call obj,$(STRATAFS_SRC)) $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/mkimage: $(call obj,$(MKIMAGE_SRC)) $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/strata: $(call obj,driver/main.c) $(DRVLIB) $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# Install the Debian packages the build, the tests and the demo need (no-op when present).
deps:
	@sh .ci/deps.sh

# The whole suite twice: as root stratafs uses FUSE passthrough where it can, then with
# passthrough off (the splice path and the kernel's page cache), so both data paths stay
# tested.  Tests that are about passthrough itself ask for it with -o passthrough=.
check: deps
	$(MAKE) all
	cd tests && /usr/bin/python3 -m pytest -q -ra $(PYTEST_ARGS)
	cd tests && STRATAFS_PASSTHROUGH=off /usr/bin/python3 -m pytest -q -ra $(PYTEST_ARGS)

check-san: deps
	$(MAKE) SAN=1 all
	cd tests && STRATA_BUILD=$(CURDIR)/build-san ASAN_OPTIONS=detect_leaks=0 /usr/bin/python3 -m pytest -q -ra $(PYTEST_ARGS)

demo: deps
	$(MAKE) all
	sh tests/demo.sh

bench: deps
	$(MAKE) all
	bench/run

bench-quick: deps
	$(MAKE) all
	bench/run --quick

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man1
	install -m 755 $(BINS) $(DESTDIR)$(PREFIX)/bin/
	install -m 644 Documentation/*.1 $(DESTDIR)$(PREFIX)/share/man/man1/

clean:
	rm -rf build build-san

# SquashFS reader test tools: sqfs-dump (walks an image with the reader, for comparing
# with the kernel's mount) and the libFuzzer target over the reader (`make fuzz`).
FUZZ_SECONDS ?= 60
SQFS_READER_SRC := fs/squashfs/reader.c fs/squashfs/bcache.c fs/squashfs/codec_extra.c
FUZZ_LIBS := $(shell pkg-config --libs liblz4 libzstd zlib liblzma 2>/dev/null) -lpthread

$(BUILD)/sqfs-dump: $(call obj,tests/fuzz/sqfs_dump.c $(SQFS_READER_SRC))
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/fuzz-sqfs: tests/fuzz/fuzz_reader.c $(SQFS_READER_SRC) $(wildcard fs/squashfs/*.h)
	@mkdir -p $(dir $@)
	clang -g -O1 -fsanitize=fuzzer,address,undefined -std=gnu11 -D_GNU_SOURCE \
		-D_FILE_OFFSET_BITS=64 -Ifs -o $@ $(filter %.c,$^) $(FUZZ_LIBS)

fuzz: deps $(BUILD)/fuzz-sqfs
	@mkdir -p $(BUILD)/fuzz-corpus
	$(BUILD)/fuzz-sqfs -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -timeout=20 \
		-artifact_prefix=$(BUILD)/ $(BUILD)/fuzz-corpus tests/fuzz/corpus

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
