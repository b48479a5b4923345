# moed build. Sources are found by wildcard: a new file in a module folder is
# built without touching this file.
#
#   make                      every program into build/bin/
#   make check                all tests that need no GPU (unit + integration)
#   make check-unit           cmocka unit tests only
#   make SANITIZE=address,undefined check-unit   (objects under build/san/)
#   make fuzz                 libFuzzer targets (clang) into build/fuzz/
#   make bench                benchmarks, JSON on stdout
#   make install [DESTDIR= PREFIX=]
#   make check-cuda           CUDA tests (exit 77 = skipped without a GPU)
#   CUDA=auto|0|1             auto: build the CUDA tests when nvcc is found

CC       ?= cc
PREFIX   ?= /usr/local
SANITIZE ?=
PYTHON   ?= /usr/bin/python3

ifneq ($(SANITIZE),)
BUILD ?= build/san
SANFLAGS := -fsanitize=$(SANITIZE) -fno-omit-frame-pointer -fno-sanitize-recover=undefined
else
BUILD ?= build
SANFLAGS :=
endif

BIN := $(BUILD)/bin

# Baseline x86-64 for everything; files named *_avx2.c / *_avx512.c get their
# ISA flags below and are only called after a cpuid check, so one binary runs
# on any x86-64.
CFLAGS_COMMON := -std=gnu11 -O2 -g -Wall -Wextra -Wno-unused-parameter \
                 -Wno-missing-field-initializers -fno-strict-aliasing -pthread \
                 -MMD -MP -I. $(SANFLAGS)
CFLAGS   ?=
LDFLAGS  ?=
LIBS     := -ljansson -lpcre2-8 -lxxhash -luring -lnuma -lm -pthread
LIBS_SERVE := -lmicrohttpd -linih -lsystemd   # moed and tests only
LIBS_CURL  := -lcurl -lreadline               # moectl (chat's line editing)

ISA_AVX2   := -mavx2 -mfma -mf16c
ISA_AVX512 := -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512bf16 -mavx2 -mfma -mf16c

# Library modules, lowest layer first (see docs/DESIGN.md).
MODULES  := common quant format backend router offload experts kv tokenizer model engine ipc
LIB_SRCS := $(foreach m,$(MODULES),$(wildcard $(m)/*.c))
LIB_OBJS := $(LIB_SRCS:%.c=$(BUILD)/obj/%.o)
LIB      := $(BUILD)/lib/libmoe.a

TOOL_SRCS := $(wildcard tools/moe_*.c)
TOOLS     := $(patsubst tools/moe_%.c,$(BIN)/moe-%,$(TOOL_SRCS))

# the daemon: every daemon/*.c; the client: tools/moectl.c
DAEMON_SRCS := $(wildcard daemon/*.c)
DAEMON_OBJS := $(DAEMON_SRCS:%.c=$(BUILD)/obj/%.o)
ifneq ($(DAEMON_SRCS),)
TOOLS += $(BIN)/moed
endif
ifneq ($(wildcard tools/moectl.c),)
TOOLS += $(BIN)/moectl
endif

TEST_SRCS := $(wildcard tests/unit/test_*.c)
TESTS     := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(TEST_SRCS))

FUZZ_SRCS := $(wildcard tests/fuzz/fuzz_*.c)
FUZZERS   := $(patsubst tests/fuzz/%.c,build/fuzz/%,$(FUZZ_SRCS))

# test and tool objects are intermediates of pattern rules: keep them between runs
.SECONDARY:

# ---- CUDA (optional) --------------------------------------------------------
# Only tests link CUDA: the main programs never depend on it. auto: on when
# nvcc is found; 0: off; 1: required. No GPU is needed to build: the
# architectures are named (nvcc's -arch=native silently falls back).
CUDA       ?= auto
NVCC       ?= $(firstword $(shell command -v nvcc 2>/dev/null) $(wildcard /usr/local/cuda/bin/nvcc))
CUDA_HOME  ?= $(patsubst %/bin/nvcc,%,$(NVCC))
CUDA_ARCH  := -gencode arch=compute_90,code=sm_90 -gencode arch=compute_80,code=sm_80
CXX        ?= g++
comma      := ,
# -Xcompiler splits at commas: one option per sanitizer
NVCC_SAN   := $(if $(SANITIZE),$(foreach s,$(subst $(comma), ,$(SANITIZE)),-Xcompiler -fsanitize=$(s)) \
              -Xcompiler -fno-omit-frame-pointer)
NVCCFLAGS  := -O2 -g -std=c++17 -I. $(CUDA_ARCH) -Xcompiler -Wall,-Wextra,-Wno-unused-parameter \
              $(NVCC_SAN)
ifeq ($(CUDA),0)
CUDA_ON :=
else ifeq ($(CUDA),1)
CUDA_ON := 1
ifeq ($(NVCC),)
$(error CUDA=1 but no nvcc found (set NVCC=/path/to/nvcc))
endif
else
CUDA_ON := $(if $(NVCC),1,)
endif
CUDA_TEST_SRCS := $(wildcard tests/cuda/test_*.cu)
CUDA_LIB_SRCS  := $(wildcard backend/cuda/*.cu)
ifneq ($(CUDA_ON),)
CUDA_TESTS := $(patsubst tests/cuda/%.cu,$(BUILD)/tests/%,$(CUDA_TEST_SRCS))
else
CUDA_TESTS :=
endif
CUDA_LIB_OBJS := $(CUDA_LIB_SRCS:%.cu=$(BUILD)/obj/%.o)

.PHONY: all check check-unit check-integration check-cuda fuzz bench install gen-ini clean deps
all: $(TOOLS) $(CUDA_TESTS)

$(BUILD)/obj/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -MMD -MP -c $< -o $@

# a CUDA test: its own object, the CUDA sources, libmoe.a, the CUDA runtime;
# linked by the host C++ compiler (whole-program device code, no -rdc)
$(CUDA_TESTS): $(BUILD)/tests/%: $(BUILD)/obj/tests/cuda/%.o $(CUDA_LIB_OBJS) $(LIB)
	@mkdir -p $(dir $@)
	$(CXX) $(SANFLAGS) $(LDFLAGS) $< $(CUDA_LIB_OBJS) $(LIB) -L$(CUDA_HOME)/lib64 \
	    -Wl,-rpath,$(CUDA_HOME)/lib64 -lcudart $(LIBS) -o $@

check-cuda: $(CUDA_TESTS)
	@bash tests/run_tests.sh unit $(BUILD)/tests '*_cuda'

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_COMMON) $(CFLAGS_ISA) $(CFLAGS) -c $< -o $@

$(BUILD)/obj/%_avx2.o:   CFLAGS_ISA := $(ISA_AVX2)
$(BUILD)/obj/%_avx512.o: CFLAGS_ISA := $(ISA_AVX512)

$(LIB): $(LIB_OBJS)
	@mkdir -p $(dir $@)
	rm -f $@
	ar rcs $@ $^

$(BIN)/moe-%: $(BUILD)/obj/tools/moe_%.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_COMMON) $(CFLAGS) $(LDFLAGS) $< $(LIB) $(LIBS) -o $@

# moe-pack's private pieces (calibration, matrix formats, MC-MoE) in tools/pack/
PACK_SRCS := $(wildcard tools/pack/*.c)
PACK_OBJS := $(PACK_SRCS:%.c=$(BUILD)/obj/%.o)
$(BIN)/moe-pack: $(BUILD)/obj/tools/moe_pack.o $(PACK_OBJS) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_COMMON) $(CFLAGS) $(LDFLAGS) $(filter %.o,$^) $(LIB) $(LIBS) -o $@

# moe-bench's pieces beyond its main file (tiered-memory subcommands) in tools/bench/
BENCH_SRCS := $(wildcard tools/bench/*.c)
BENCH_OBJS := $(BENCH_SRCS:%.c=$(BUILD)/obj/%.o)
$(BIN)/moe-bench: $(BUILD)/obj/tools/moe_bench.o $(BENCH_OBJS) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_COMMON) $(CFLAGS) $(LDFLAGS) $(filter %.o,$^) $(LIB) $(LIBS) -o $@

$(BIN)/moed: $(DAEMON_OBJS) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_COMMON) $(CFLAGS) $(LDFLAGS) $(DAEMON_OBJS) $(LIB) $(LIBS_SERVE) $(LIBS) -o $@

$(BIN)/moectl: $(BUILD)/obj/tools/moectl.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_COMMON) $(CFLAGS) $(LDFLAGS) $< $(LIB) $(LIBS_CURL) $(LIBS) -o $@

# unit tests may exercise daemon/ code too: it is linked from its objects
# (except the file holding main()).
DAEMON_LIB_OBJS := $(filter-out $(BUILD)/obj/daemon/daemon_main.o,$(DAEMON_OBJS))
$(BUILD)/tests/test_%: $(BUILD)/obj/tests/unit/test_%.o $(LIB) $(DAEMON_LIB_OBJS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_COMMON) $(CFLAGS) $(LDFLAGS) $< $(DAEMON_LIB_OBJS) $(LIB) $(LIBS_SERVE) \
	    $(LIBS_CURL) $(LIBS) -lcmocka -o $@

check-unit: $(TESTS) $(CUDA_TESTS)
	@bash tests/run_tests.sh unit $(BUILD)/tests

check-integration: $(TOOLS)
	@PYTHON=$(PYTHON) BIN=$(BIN) bash tests/run_tests.sh integration tests/integration

check: $(TESTS) $(TOOLS) $(CUDA_TESTS)
	@PYTHON=$(PYTHON) BIN=$(BIN) bash tests/run_tests.sh all $(BUILD)/tests tests/integration

# libFuzzer needs clang; the fuzz build compiles the library sources directly.
FUZZ_CC    ?= clang
FUZZ_FLAGS := -std=gnu11 -O1 -g -I. -fsanitize=fuzzer,address,undefined -pthread
FUZZ_LIB_SRCS := $(filter-out %_avx2.c %_avx512.c,$(LIB_SRCS))
build/fuzz/fuzz_%: tests/fuzz/fuzz_%.c $(LIB_SRCS)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) -DMOE_NO_SIMD $< $(FUZZ_LIB_SRCS) $(LIBS_SERVE) $(LIBS) -o $@
fuzz: $(FUZZERS)

bench: $(TOOLS)
	@bash tests/bench/run_bench.sh $(BIN)

deps:
	bash scripts/install-deps.sh

SYSCONFDIR ?= /etc
UNITDIR    ?= $(PREFIX)/lib/systemd/system
# programs, units (ExecStart pointed at PREFIX) and the example INI, which
# never overwrites an operator's own
install: $(TOOLS)
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSCONFDIR)/moed
	install -m 0755 $(TOOLS) $(DESTDIR)$(PREFIX)/bin/
	sed 's|/usr/local/bin/|$(PREFIX)/bin/|g' etc/moed.service > $(DESTDIR)$(UNITDIR)/moed.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/moed.service
	install -m 0644 etc/moed.socket $(DESTDIR)$(UNITDIR)/
	test -e $(DESTDIR)$(SYSCONFDIR)/moed/moed.ini || \
	    install -m 0644 etc/moed.ini $(DESTDIR)$(SYSCONFDIR)/moed/moed.ini
	@# the group whose members may use the socket (SupplementaryGroups=moed,
	@# SocketGroup=moed); on this host only, and only as root: a DESTDIR
	@# staging build leaves it to the package's postinst (groupadd --system moed)
	@if [ -n "$(DESTDIR)" ]; then \
	    echo "note: DESTDIR set: group moed not created (groupadd --system moed on the target)"; \
	elif getent group moed >/dev/null; then :; \
	elif [ "$$(id -u)" -eq 0 ]; then groupadd --system moed && echo "created system group moed"; \
	else echo "note: not root: group moed not created (sudo groupadd --system moed)"; fi

# etc/moed.ini is the daemon's own dump of its config table (MOED_* variables,
# which set keys too, left out: MOED_SOCKET is often exported for moectl)
gen-ini: $(BIN)/moed
	env $$(env | sed -n 's/^\(MOED_[A-Za-z0-9_]*\)=.*/-u \1/p') $(BIN)/moed --dump-config > etc/moed.ini

clean:
	rm -rf build

-include $(LIB_OBJS:.o=.d) $(DAEMON_OBJS:.o=.d) $(BUILD)/obj/tools/moectl.d \
         $(TOOL_SRCS:tools/%.c=$(BUILD)/obj/tools/%.d) $(PACK_OBJS:.o=.d) \
         $(TEST_SRCS:tests/unit/%.c=$(BUILD)/obj/tests/unit/%.d) \
         $(if $(CUDA_ON),$(CUDA_LIB_OBJS:.o=.d) \
             $(CUDA_TEST_SRCS:tests/cuda/%.cu=$(BUILD)/obj/tests/cuda/%.d))
