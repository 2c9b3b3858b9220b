# The DMA subsystem: host tests, per-arch libdma and test kernels, QEMU runs, benchmarks.
#
#   make run            build and boot the demo kernel (ARCH=aarch64|riscv64|x86_64)
#   make test           host suites, library checks, every arch under QEMU; "N passed, N failed"
#   make test-host      host suite only (GoogleTest, ASan + UBSan, debug configuration)
#   make test-capi      the C API from a C11 program (tests/host/c/), over the host backend
#   make test-host-release  host suite in the release configuration (-O2, no debug aids)
#   make test-host-tsan     the threaded host tests (named Concurrent*) under ThreadSanitizer
#   make test-qemu      one arch's in-VM suite (ARCH=...)
#   make lib            the library for a kernel: ARCH, LIB_CONFIG=release (default) | debug;
#                       prints where it is (include/ + lib/libdma.a) and its size
#   make bench          benchmarks (build/bench/summary.txt)
#   make format / lint  clang-format / clang-tidy
#
# Every target that needs tools runs scripts/setup.sh first; it installs only what is missing.
#
# Library and kernel build choices (libdma.a and the test kernel of ARCH; changing one rebuilds
# the objects of $(KDIR), see KFLAGS_STAMP):
#   RISCV_ABI=lp64|lp64d   riscv64 calling convention: lp64 (default, soft-float: no FP register
#                          crosses a call) or lp64d (double-float, the default of GCC's riscv64
#                          Linux toolchains; GNU ld and ld.lld refuse to mix the two). RISCV_MARCH (default
#                          rv64gc_zicbom) must contain D for lp64d. The library uses no floating
#                          point either way (scripts/check_lib.sh, part "lib" of make test).
#   X86_CMODEL=kernel|small|large  x86-64 code model: kernel (default) for an image linked in the
#                          top 2 GiB (0xFFFFFFFF80000000 and up), small for one in the low 2 GiB,
#                          large for one anywhere else (e.g. 0xFFFF8000'00100000).
#   aarch64                no choice to make: -mgeneral-regs-only keeps FP/SIMD registers out of
#                          the library, and since no FP value crosses its API it links with
#                          hard-float AAPCS64 kernels as well (AArch64 ELF has no float-ABI flag).
#   DEBUG_INFO=1|0         -g on the kernel and library objects (default 1); 0 for linkers that
#                          cannot take clang's debug relocations (README, "Building libdma.a for
#                          your kernel").
#   EXTRA_CXXFLAGS=...     added last to the kernel and library objects; the flags the code needs
#                          (ARCH_CXXFLAGS in arch/<arch>/arch.mk) stay, and cannot be overridden.
#   LIB_CONFIG=release|debug  the library's configuration (see "Library configuration" below):
#                          release (no debug aids) is the default of `make lib`, debug (KDEBUG
#                          asserts, the misuse checker, statistics) that of the test kernel's
#                          targets (kernel, run, debug, test-qemu), whose in-VM tests use the aids;
#                          `make test-qemu LIB_CONFIG=release` runs them against a release library.
#   LIB_OPT=-Os|-O2|...    the library objects' optimisation: -Os for release (its size limit,
#                          scripts/check_lib.sh), -O2 for debug. The test kernel's own objects: -O2.

# Recipes use bash features (PIPESTATUS in test-host); Debian's /bin/sh is dash.
SHELL := /bin/bash

ARCH ?= aarch64
BUILD ?= build
# 4G: RAM above 4 GiB on every machine, so 32-bit devices really bounce (in-VM device tests).
QEMU_MEM ?= 4G
# CPUs (1 to 8): the test kernel starts all of them and its smp_ tests use every one.
QEMU_SMP ?= 4
QEMU_EXTRA ?=
QEMU_TIMEOUT ?= 120
# 1: the machine gets its IOMMU (SMMUv3 / RISC-V IOMMU / VT-d) and the kernel is told iommu=on.
QEMU_IOMMU ?= 0
# 1 (aarch64, riscv64): the PCIe host bridge gets dma-ranges (identity windows over parts of RAM,
# tests/qemu/run_qemu.py --dma-ranges), so the devices bounce whatever lies outside them.
QEMU_DMA_RANGES ?= 0
LLVM_VER ?= 19

HOST_CXX := clang++-$(LLVM_VER)
CROSS_CXX := clang++-$(LLVM_VER)
LD := ld.lld-$(LLVM_VER)
AR := llvm-ar-$(LLVM_VER)
OBJDUMP := llvm-objdump-$(LLVM_VER)
SIZE := llvm-size-$(LLVM_VER)
CLANG_FORMAT := clang-format-$(LLVM_VER)
CLANG_TIDY := clang-tidy-$(LLVM_VER)

SETUP_STAMP := $(BUILD)/.setup-done
# make lib needs only the compiler and binutils (scripts/setup.sh lib), not QEMU and the rest.
SETUP_LIB_STAMP := $(BUILD)/.setup-lib-done

WARNINGS := -Wall -Wextra -Wconversion -Wsign-conversion -Wshadow -Wthread-safety \
            -Wno-unused-parameter -Werror
# BASE_CXXFLAGS: every build. The host builds (tests, fuzzers, lint) always carry -g (sanitizer
# reports need it); the kernel and library objects carry it when DEBUG_INFO=1.
# -Iinclude: the public headers (include/dmakit/), the one include root a kernel adds; -I.: the
# library's own internal headers (dma/, mm/, support/, arch/<arch>/dma/) and the test kernel's.
BASE_CXXFLAGS := -std=c++20 -Iinclude -I. $(WARNINGS) -fno-exceptions -fno-rtti
COMMON_CXXFLAGS := $(BASE_CXXFLAGS) -g

DEBUG_INFO ?= 1
ifeq ($(DEBUG_INFO),1)
KERNEL_DEBUG_CXXFLAGS := -g
else ifeq ($(DEBUG_INFO),0)
KERNEL_DEBUG_CXXFLAGS :=
else
$(error DEBUG_INFO=$(DEBUG_INFO): must be 1 (debug info, the default) or 0 (none))
endif
EXTRA_CXXFLAGS ?=

# The subsystem proper: what libdma.a contains on every arch and what the host tests exercise.
LIBDMA_SRCS := $(wildcard support/*.cc) $(wildcard mm/*.cc) $(wildcard dma/*.cc)

# ---------------------------------------------------------------------------------------------
# Host: GoogleTest suite under ASan + UBSan, with the cache-model backend.

HOST_DIR := $(BUILD)/host
HOST_CXXFLAGS := $(COMMON_CXXFLAGS) -O1 -DDMA_DEBUG=1 -DDMA_API_DEBUG=1 -DDMA_FAULT_INJECTION=1 \
                 -DDMA_PAGE_POISON=1 \
                 -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
HOST_LDFLAGS := -fsanitize=address,undefined -lgtest -lpthread
HOST_BACKEND_SRCS := $(wildcard arch/host/*.cc)
# The test kernel's device-tree reader, for its host test on hand-built blobs.
HOST_TEST_SRCS := $(wildcard tests/host/*.cc) $(wildcard tests/host/*/*.cc) testkernel/fdt.cc \
                  testkernel/kstring.cc
HOST_SRCS := $(LIBDMA_SRCS) $(HOST_BACKEND_SRCS) $(HOST_TEST_SRCS)
HOST_OBJS := $(patsubst %.cc,$(HOST_DIR)/obj/%.o,$(HOST_SRCS))
HOST_TEST_BIN := $(HOST_DIR)/dma_host_tests

.PHONY: all setup test test-host test-capi test-host-release test-host-tsan test-qemu test-qemu-all run debug lib kernel bench fuzz format \
        format-check lint clean compile_commands.json

all: $(HOST_TEST_BIN)

setup: $(SETUP_STAMP)
$(SETUP_STAMP): scripts/setup.sh
	@bash scripts/setup.sh
	@mkdir -p $(dir $@) && touch $@
$(SETUP_LIB_STAMP): scripts/setup.sh
	@bash scripts/setup.sh lib
	@mkdir -p $(dir $@) && touch $@

$(HOST_DIR)/obj/%.o: %.cc | $(SETUP_STAMP)
	@mkdir -p $(dir $@)
	$(HOST_CXX) $(HOST_CXXFLAGS) -MMD -MP -c $< -o $@

$(HOST_TEST_BIN): $(HOST_OBJS)
	$(HOST_CXX) $^ $(HOST_LDFLAGS) -o $@

test-host: $(HOST_TEST_BIN)
	@$(HOST_TEST_BIN) --gtest_brief=1 2>&1 | tee $(HOST_DIR)/test.log | tail -n 40; \
	  exit $${PIPESTATUS[0]}

# The C API from C: tests/host/c/*.c compiled with gcc as C11 (-pedantic), linked with the host
# objects of the library and of the host backend (no GoogleTest); ends "capi: N passed, N failed".
HOST_CC ?= gcc
HOST_CFLAGS := -std=c11 -Wall -Wextra -Werror -pedantic -g -O1 -Iinclude -I.
CAPI_TEST_SRCS := $(wildcard tests/host/c/*.c)
CAPI_TEST_OBJS := $(patsubst %.c,$(HOST_DIR)/obj/%.o,$(CAPI_TEST_SRCS)) \
                  $(patsubst %.cc,$(HOST_DIR)/obj/%.o,$(LIBDMA_SRCS) $(HOST_BACKEND_SRCS))
CAPI_TEST_BIN := $(HOST_DIR)/capi_test

$(HOST_DIR)/obj/%.o: %.c | $(SETUP_STAMP)
	@mkdir -p $(dir $@)
	$(HOST_CC) $(HOST_CFLAGS) -MMD -MP -c $< -o $@

$(CAPI_TEST_BIN): $(CAPI_TEST_OBJS)
	$(HOST_CXX) $^ -fsanitize=address,undefined -lpthread -o $@

test-capi: $(CAPI_TEST_BIN)
	@$(CAPI_TEST_BIN)

# The release configuration, as a kernel ships it: -O2, DMA_DEBUG=0 (so no KDEBUG_ASSERT and no
# statistics), no misuse checker, no fault injection, no page poison; UBSan only. Tests of a debug
# aid are compiled only where the aid exists (#if on the same macro), never run and skipped.
HOST_REL_DIR := $(BUILD)/host-release
HOST_REL_CXXFLAGS := $(COMMON_CXXFLAGS) -O2 -DDMA_DEBUG=0 -DDMA_API_DEBUG=0 \
                     -DDMA_FAULT_INJECTION=0 -DDMA_PAGE_POISON=0 \
                     -fsanitize=undefined -fno-sanitize-recover=all
HOST_REL_LDFLAGS := -fsanitize=undefined -lgtest -lpthread
HOST_REL_OBJS := $(patsubst %.cc,$(HOST_REL_DIR)/obj/%.o,$(HOST_SRCS))
HOST_REL_TEST_BIN := $(HOST_REL_DIR)/dma_host_tests

$(HOST_REL_DIR)/obj/%.o: %.cc | $(SETUP_STAMP)
	@mkdir -p $(dir $@)
	$(HOST_CXX) $(HOST_REL_CXXFLAGS) -MMD -MP -c $< -o $@

$(HOST_REL_TEST_BIN): $(HOST_REL_OBJS)
	$(HOST_CXX) $^ $(HOST_REL_LDFLAGS) -o $@

test-host-release: $(HOST_REL_TEST_BIN)
	@$(HOST_REL_TEST_BIN) --gtest_brief=1 2>&1 | tee $(HOST_REL_DIR)/test.log | tail -n 40; \
	  exit $${PIPESTATUS[0]}

# The threaded host tests under ThreadSanitizer, in the debug configuration (so the misuse
# checker, the statistics and the fault injector run concurrently too). Naming convention: a
# host test that runs several threads has a name starting with "Concurrent" (TEST(Suite,
# ConcurrentFoo)); HOST_TSAN_FILTER selects exactly those, from every file under tests/host/.
HOST_TSAN_DIR := $(BUILD)/host-tsan
HOST_TSAN_FILTER ?= *.Concurrent*
HOST_TSAN_CXXFLAGS := $(COMMON_CXXFLAGS) -O1 -DDMA_DEBUG=1 -DDMA_API_DEBUG=1 \
                      -DDMA_FAULT_INJECTION=1 -DDMA_PAGE_POISON=1 \
                      -fsanitize=thread -fno-omit-frame-pointer
HOST_TSAN_LDFLAGS := -fsanitize=thread -lgtest -lpthread
# Only the test files that mention "Concurrent" are built (plus the runner and the helpers under
# tests/host/ that are not test files): the others would cost a TSan compile and never run.
HOST_TSAN_TEST_SRCS := $(filter-out %_test.cc,$(HOST_TEST_SRCS)) \
                       $(shell grep -l Concurrent $(filter %_test.cc,$(HOST_TEST_SRCS)))
HOST_TSAN_OBJS := $(patsubst %.cc,$(HOST_TSAN_DIR)/obj/%.o,$(LIBDMA_SRCS) $(HOST_BACKEND_SRCS) \
                    $(HOST_TSAN_TEST_SRCS))
HOST_TSAN_TEST_BIN := $(HOST_TSAN_DIR)/dma_host_tests

$(HOST_TSAN_DIR)/obj/%.o: %.cc | $(SETUP_STAMP)
	@mkdir -p $(dir $@)
	$(HOST_CXX) $(HOST_TSAN_CXXFLAGS) -MMD -MP -c $< -o $@

$(HOST_TSAN_TEST_BIN): $(HOST_TSAN_OBJS)
	$(HOST_CXX) $^ $(HOST_TSAN_LDFLAGS) -o $@

# A race report does not stop the run; it makes the exit status 66 (TSan's exitcode), which
# fails the target (and counts as a failure in make test) even when every test passed.
test-host-tsan: $(HOST_TSAN_TEST_BIN)
	@$(HOST_TSAN_TEST_BIN) --gtest_brief=1 --gtest_filter='$(HOST_TSAN_FILTER)' 2>&1 | \
	  tee $(HOST_TSAN_DIR)/test.log | tail -n 40; rc=$${PIPESTATUS[0]}; \
	  if [ $$rc -ne 0 ]; then echo "test-host-tsan: exit status $$rc (see $(HOST_TSAN_DIR)/test.log)"; fi; \
	  exit $$rc

# ---------------------------------------------------------------------------------------------
# Kernel builds: one arch at a time. arch/<arch>/arch.mk sets
#   TRIPLE         clang target triple
#   ARCH_CXXFLAGS  the C++ flags the kernel and libdma objects of that arch need whatever the ABI
#                  (no FP registers, no red zone, -DSUPPORT_NO_MUSTTAIL=1, ...); not a command-line
#                  variable (use EXTRA_CXXFLAGS)
#   ARCH_ABI_CXXFLAGS, ARCH_ABI_ASFLAGS  the flags that follow the ABI choices above
#                  (RISCV_ABI, X86_CMODEL), for the C++ and the .S files
#   ARCH_ASFLAGS   flags for the arch's .S files
#   ARCH_LDFLAGS   linker flags
#   ARCH_SRCS      the port (boot, traps, MMU, console, platform) and its own in-VM tests
#   ARCH_ASM_SRCS  assembly sources
#   ARCH_DMA_SRCS  the arch's DmaOp subclass: linked into the kernel and into libdma.a
#   LINKER_SCRIPT  linker/<arch>.ld (must keep .ktest_registry and .init_array, see
#                  tests/qemu/ktest.h)
# The QEMU command line of each arch lives in tests/qemu/run_qemu.py (table ARCHES).

# ---- Library configuration (issue 12, item 8). The five configuration macros (DMA_DEBUG, ...,
# include/dmakit/support/build_config.h) are written by scripts/gen_config.sh into ONE generated
# header, $(LIB_OUT)/include/dmakit/config.h, which every library and test-kernel object of this
# KDIR sees through -I$(LIB_OUT)/include (no -D flags), exactly as a kernel using the output tree
# does; libdma.a defines the link-time tag naming the configuration (support/build_config.cc).
# Each configuration has its own KDIR, so switching never mixes or rebuilds objects:
# $(BUILD)/<arch> for debug (the test kernel's), $(BUILD)/<arch>-release for release.
LIB_KERNEL_GOALS := kernel run debug test-qemu compile_commands.json
ifeq ($(origin LIB_CONFIG),undefined)
ifneq ($(filter $(LIB_KERNEL_GOALS),$(MAKECMDGOALS)),)
LIB_CONFIG := debug
else
LIB_CONFIG := release
endif
endif
ifeq ($(LIB_CONFIG),release)
LIB_OPT ?= -Os
KDIR_SUFFIX := -release
else ifeq ($(LIB_CONFIG),debug)
LIB_OPT ?= -O2
KDIR_SUFFIX :=
else
$(error LIB_CONFIG=$(LIB_CONFIG): must be release (no debug aids, the default of make lib) or \
  debug (asserts, misuse checker, statistics: the test kernel's default))
endif
# KDIR: where one arch's objects, libdma.a and kernel.elf go; scripts/check_lib.sh gives each ABI
# its own with KDIR=... on the command line (only there: a KDIR in the environment is usually a
# Linux source tree).
ifneq ($(origin KDIR),command line)
KDIR := $(BUILD)/$(ARCH)$(KDIR_SUFFIX)
endif
# The output tree a kernel uses: include/ (the public headers and config.h: the one include root
# it adds) and lib/libdma.a.
LIB_OUT := $(KDIR)/dmakit
LIB_CONFIG_H := $(LIB_OUT)/include/dmakit/config.h
LIB_PUBLIC_HDRS := $(patsubst include/%,%,$(shell find include/dmakit -name '*.h' 2>/dev/null))
LIB_OUT_HDRS := $(addprefix $(LIB_OUT)/include/,$(LIB_PUBLIC_HDRS))
ifeq ($(origin ARCH_CXXFLAGS),command line)
$(error ARCH_CXXFLAGS holds the flags the code needs on $(ARCH) and cannot be replaced; choose \
  the ABI with RISCV_ABI=lp64|lp64d or X86_CMODEL=kernel|small|large, add flags with EXTRA_CXXFLAGS)
endif
-include arch/$(ARCH)/arch.mk

# OPT: -O2 for the test kernel's objects, $(LIB_OPT) for the library's (a target-specific value,
# below). No configuration -D flags: the generated $(LIB_CONFIG_H) decides, as in a kernel.
OPT := -O2
KERNEL_CXXFLAGS = $(BASE_CXXFLAGS) -I$(LIB_OUT)/include $(KERNEL_DEBUG_CXXFLAGS) --target=$(TRIPLE) \
                  -ffreestanding -nostdlib -nostdinc++ -fno-stack-protector -fno-pic \
                  -fno-threadsafe-statics -fno-use-cxa-atexit $(OPT) $(ARCH_CXXFLAGS) \
                  $(ARCH_ABI_CXXFLAGS) $(EXTRA_CXXFLAGS)
KERNEL_ASFLAGS := --target=$(TRIPLE) $(ARCH_ASFLAGS) $(ARCH_ABI_ASFLAGS) -Iinclude -I. \
                  -I$(LIB_OUT)/include
# The test kernel's C drivers (drivers/*/*.c, against dmakit/dmakit.h): C11, with the arch's
# flags (which are all valid C flags) and the same ABI as the C++ objects.
CROSS_CC := clang-$(LLVM_VER)
KERNEL_CFLAGS = -std=c11 -Iinclude -I. -I$(LIB_OUT)/include -Wall -Wextra -Wconversion \
                -Wsign-conversion -Werror -pedantic $(KERNEL_DEBUG_CXXFLAGS) --target=$(TRIPLE) \
                -ffreestanding -nostdlib -fno-stack-protector -fno-pic $(OPT) $(ARCH_CXXFLAGS) \
                $(ARCH_ABI_CXXFLAGS)
# Two kernels from the same objects: the demo kernel (make run, make debug) and the test kernel
# (make test-qemu), which adds the in-VM tests (tests/qemu/*_test.cc, tests/qemu/<arch>/*.cc and
# their helpers). The harness (tests/qemu/ktest.cc) is in both; the demo kernel registers no test.
KERNEL_COMMON_SRCS := $(wildcard testkernel/*.cc) tests/qemu/ktest.cc $(wildcard drivers/*/*.cc)
KERNEL_TEST_SRCS := $(filter-out tests/qemu/ktest.cc,$(wildcard tests/qemu/*.cc)) \
                    $(wildcard tests/qemu/$(ARCH)/*.cc)
KERNEL_C_SRCS := $(wildcard drivers/*/*.c)
# libdma.a: the subsystem. libdma_c.a: the C interface (dmakit/dmakit.h) over it, which only a
# kernel with C callers links (before libdma.a); a C++ kernel does not pay for it.
KLIB_C_SRCS := $(filter dma/capi.cc %_capi.cc,$(LIBDMA_SRCS) $(ARCH_DMA_SRCS))
KLIB_OBJS := $(patsubst %.cc,$(KDIR)/obj/%.o,$(filter-out $(KLIB_C_SRCS),$(LIBDMA_SRCS) $(ARCH_DMA_SRCS)))
KLIB_C_OBJS := $(patsubst %.cc,$(KDIR)/obj/%.o,$(KLIB_C_SRCS))
KERNEL_OBJS := $(patsubst %.cc,$(KDIR)/obj/%.o,$(KERNEL_COMMON_SRCS) $(ARCH_SRCS)) \
               $(patsubst %.c,$(KDIR)/obj/%.o,$(KERNEL_C_SRCS)) \
               $(patsubst %.S,$(KDIR)/obj/%.o,$(ARCH_ASM_SRCS))
KERNEL_TEST_OBJS := $(patsubst %.cc,$(KDIR)/obj/%.o,$(KERNEL_TEST_SRCS))
LIBDMA := $(LIB_OUT)/lib/libdma.a
LIBDMA_C := $(LIB_OUT)/lib/libdma_c.a
KERNEL_ELF := $(KDIR)/kernel.elf
DEMO_ELF := $(KDIR)/demo.elf
ARCH_MK := $(wildcard arch/$(ARCH)/arch.mk)

# Extra kernel command-line words, e.g. QEMU_APPEND=ktest=bounce (run only matching tests).
QEMU_APPEND ?=
RUN_QEMU := python3 tests/qemu/run_qemu.py --arch $(ARCH) --kernel $(KERNEL_ELF) \
            --mem $(QEMU_MEM) --smp $(QEMU_SMP) --timeout $(QEMU_TIMEOUT) \
            --extra '$(QEMU_EXTRA)' --append '$(QEMU_APPEND)' \
            $(if $(filter 1,$(QEMU_IOMMU)),--iommu) \
            $(if $(filter 1,$(QEMU_DMA_RANGES)),--dma-ranges)

# The flags of the last build in $(KDIR): rewritten (so newer than every object) only when they
# change, so that `make lib RISCV_ABI=lp64d` after an lp64 build, or DEBUG_INFO=0 after a build
# with debug info, rebuilds everything instead of mixing objects of two ABIs.
KFLAGS_STAMP := $(KDIR)/.build-flags
KFLAGS_NOW = $(KERNEL_CXXFLAGS) / $(KERNEL_ASFLAGS) / LIB_OPT=$(LIB_OPT)
.PHONY: kflags-force
# Its own OPT: otherwise it would inherit the library objects' when one of them asks for it first.
$(KFLAGS_STAMP): OPT := -O2
$(KFLAGS_STAMP): kflags-force
	@mkdir -p $(dir $@)
	@if [ "$$(cat $@ 2>/dev/null)" != '$(KFLAGS_NOW)' ]; then echo '$(KFLAGS_NOW)' > $@; fi

$(KDIR)/obj/%.o: %.cc $(ARCH_MK) $(KFLAGS_STAMP) $(LIB_CONFIG_H)
	@mkdir -p $(dir $@)
	$(CROSS_CXX) $(KERNEL_CXXFLAGS) -MMD -MP -c $< -o $@

$(KDIR)/obj/%.o: %.c $(ARCH_MK) $(KFLAGS_STAMP) $(LIB_CONFIG_H)
	@mkdir -p $(dir $@)
	$(CROSS_CC) $(KERNEL_CFLAGS) -MMD -MP -c $< -o $@

$(KDIR)/obj/%.o: %.S $(ARCH_MK) $(KFLAGS_STAMP) $(LIB_CONFIG_H)
	@mkdir -p $(dir $@)
	$(CROSS_CXX) $(KERNEL_ASFLAGS) -MMD -MP -c $< -o $@

$(KLIB_OBJS) $(KLIB_C_OBJS): OPT := $(LIB_OPT)
$(KLIB_OBJS) $(KLIB_C_OBJS): | $(SETUP_LIB_STAMP)
$(KERNEL_OBJS) $(KERNEL_TEST_OBJS) $(KERNEL_ELF) $(DEMO_ELF): | $(SETUP_STAMP)

# Rewritten only when its content changes (so a rebuild in the same configuration recompiles
# nothing); FORCE-like through kflags-force so that a changed LIB_CONFIG under an explicit KDIR is
# seen.
$(LIB_CONFIG_H): scripts/gen_config.sh kflags-force
	@bash scripts/gen_config.sh $(LIB_CONFIG) $@

$(LIB_OUT)/include/%.h: include/%.h
	@mkdir -p $(dir $@)
	@cp $< $@

$(LIBDMA): $(KLIB_OBJS)
	@mkdir -p $(dir $@)
	@rm -f $@
	$(AR) rcs $@ $^

$(LIBDMA_C): $(KLIB_C_OBJS)
	@mkdir -p $(dir $@)
	@rm -f $@
	$(AR) rcs $@ $^

$(KERNEL_ELF): $(KERNEL_OBJS) $(KERNEL_TEST_OBJS) $(LIBDMA_C) $(LIBDMA) $(LINKER_SCRIPT)
	$(LD) $(ARCH_LDFLAGS) -T $(LINKER_SCRIPT) -o $@ $(KERNEL_OBJS) $(KERNEL_TEST_OBJS) $(LIBDMA_C) \
	  $(LIBDMA)

$(DEMO_ELF): $(KERNEL_OBJS) $(LIBDMA_C) $(LIBDMA) $(LINKER_SCRIPT)
	$(LD) $(ARCH_LDFLAGS) -T $(LINKER_SCRIPT) -o $@ $(KERNEL_OBJS) $(LIBDMA_C) $(LIBDMA)

# The output tree, complete: the public headers as they are now (a header removed from include/
# is removed here too), config.h, libdma.a; then where it is and its size (text, data, bss, as
# llvm-size counts them: text includes read-only data).
lib: $(LIBDMA) $(LIBDMA_C) $(LIB_CONFIG_H) $(LIB_OUT_HDRS)
	@cd $(LIB_OUT)/include && find dmakit -name '*.h' ! -path dmakit/config.h | sort | \
	  comm -23 - <(printf '%s\n' $(LIB_PUBLIC_HDRS) | sort) | xargs -r rm -f
	@echo "libdma ($(ARCH), LIB_CONFIG=$(LIB_CONFIG), $(LIB_OPT)): $(LIB_OUT)/"
	@echo "  include/  the include root to add (-I$(LIB_OUT)/include): public headers, dmakit/config.h"
	@echo "  lib/libdma.a     the subsystem"
	@$(SIZE) -t $(LIBDMA) | awk 'END { printf "    archive: text %d  data %d  bss %d  (bytes, summed over members: inline functions once per member; scripts/check_lib.sh measures a link)\n", $$1, $$2, $$3 }'
	@echo "  lib/libdma_c.a   the C interface (dmakit/dmakit.h), for kernels with C callers: link it before libdma.a"
	@$(SIZE) -t $(LIBDMA_C) | awk 'END { printf "    size: text %d  data %d  bss %d  (bytes)\n", $$1, $$2, $$3 }'
kernel: $(KERNEL_ELF) $(DEMO_ELF)

# Boots the demo kernel: a report of memory, bounce pools and cache features, then the demo.
run: $(DEMO_ELF)
	@$(RUN_QEMU) --kernel $(DEMO_ELF) --mode demo

# Starts the kernel halted under QEMU's gdb stub (port GDB_PORT) and prints the gdb-multiarch
# command that attaches with symbols; QEMU then owns the terminal (Ctrl-A X quits).
# DEBUG_MODE=test debugs the test kernel's run instead of the demo.
DEBUG_MODE ?= demo
GDB_PORT ?= 1234
DEBUG_ELF = $(if $(filter demo,$(DEBUG_MODE)),$(DEMO_ELF),$(KERNEL_ELF))
debug: $(DEBUG_ELF)
	@$(RUN_QEMU) --kernel $(DEBUG_ELF) --mode $(DEBUG_MODE) --debug --gdb-port $(GDB_PORT)

# compile_commands.json for clangd: every host, library and kernel compile of every arch, from
# make's own dry run (nothing is built).
compile_commands.json: | $(SETUP_STAMP)
	@python3 scripts/compile_commands.py > $@.tmp && mv $@.tmp $@ && echo "wrote $@"

# Boots the test kernel and runs the in-VM suite, after checking the DmaOp's cache instructions
# in the disassembly; fails on a panic, a timeout, a bad exit status or an "EDU: clamping" line.
test-qemu: $(KERNEL_ELF)
	@$(RUN_QEMU) --mode test --objdump $(OBJDUMP)

# Everything: host suite, then each arch; one closing "N passed, N failed" line for the whole.
test: | $(SETUP_STAMP)
	@bash scripts/test_all.sh

# ---------------------------------------------------------------------------------------------
# Benchmarks (issue "Performance"): -O2, no sanitizers.

bench: | $(SETUP_STAMP)
	@BUILD=$(BUILD) bash bench/run_bench.sh

# ---------------------------------------------------------------------------------------------
# Fuzzing (issue "Reliability"): libFuzzer targets tests/fuzz/fuzz_*.cc under ASan + UBSan, with
# the misuse checker and fault injection compiled in. Seeds come from tests/fuzz/corpus/<target>
# (read only); what the fuzzer learns and any crash goes under $(FUZZ_DIR), never the repository.
#   make fuzz [FUZZ_SECONDS=10]   each target for FUZZ_SECONDS seconds
#   make fuzz-smoke               FUZZ_SMOKE_SECONDS per target (part of make test)
# Both end with "N passed, N failed", counting targets.

FUZZ_SECONDS ?= 10
FUZZ_SMOKE_SECONDS ?= 3
FUZZ_DIR := $(BUILD)/fuzz
FUZZ_CXXFLAGS := $(COMMON_CXXFLAGS) -O1 -DDMA_DEBUG=1 -DDMA_API_DEBUG=1 -DDMA_FAULT_INJECTION=1 \
                 -DDMA_PAGE_POISON=1 \
                 -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all \
                 -fno-omit-frame-pointer
FUZZ_LDFLAGS := -fsanitize=fuzzer,address,undefined
FUZZ_TARGETS := $(patsubst tests/fuzz/%.cc,%,$(wildcard tests/fuzz/fuzz_*.cc))
FUZZ_COMMON_OBJS := $(patsubst %.cc,$(FUZZ_DIR)/obj/%.o,$(LIBDMA_SRCS) $(HOST_BACKEND_SRCS) \
                      $(wildcard tests/fuzz/common/*.cc))
FUZZ_BINS := $(addprefix $(FUZZ_DIR)/bin/,$(FUZZ_TARGETS))

.PHONY: fuzz-build fuzz-smoke
.PRECIOUS: $(FUZZ_DIR)/obj/%.o

$(FUZZ_DIR)/obj/%.o: %.cc | $(SETUP_STAMP)
	@mkdir -p $(dir $@)
	$(HOST_CXX) $(FUZZ_CXXFLAGS) -MMD -MP -c $< -o $@

$(FUZZ_DIR)/bin/%: $(FUZZ_DIR)/obj/tests/fuzz/%.o $(FUZZ_COMMON_OBJS)
	@mkdir -p $(dir $@)
	$(HOST_CXX) $^ $(FUZZ_LDFLAGS) -o $@

fuzz-build: $(FUZZ_BINS)
fuzz: $(FUZZ_BINS)
	@bash tests/fuzz/run_fuzz.sh $(FUZZ_DIR) $(FUZZ_SECONDS) $(FUZZ_TARGETS)
fuzz-smoke: $(FUZZ_BINS)
	@bash tests/fuzz/run_fuzz.sh --fresh $(FUZZ_DIR) $(FUZZ_SMOKE_SECONDS) $(FUZZ_TARGETS)

# ---------------------------------------------------------------------------------------------

FORMAT_FILES := $(shell git ls-files '*.h' '*.cc' 2>/dev/null)
format: | $(SETUP_STAMP)
	$(CLANG_FORMAT) -i $(FORMAT_FILES)
format-check: | $(SETUP_STAMP)
	$(CLANG_FORMAT) --dry-run --Werror $(FORMAT_FILES)
lint: | $(SETUP_STAMP)
	$(CLANG_TIDY) --quiet $(LIBDMA_SRCS) $(HOST_BACKEND_SRCS) -- $(COMMON_CXXFLAGS) -DDMA_DEBUG=1 -DDMA_API_DEBUG=1

clean:
	rm -rf $(BUILD)

-include $(HOST_OBJS:.o=.d) $(CAPI_TEST_OBJS:.o=.d) $(HOST_REL_OBJS:.o=.d) $(HOST_TSAN_OBJS:.o=.d) $(KERNEL_OBJS:.o=.d) $(KERNEL_TEST_OBJS:.o=.d) $(KLIB_OBJS:.o=.d) $(KLIB_C_OBJS:.o=.d) $(FUZZ_COMMON_OBJS:.o=.d) \
         $(patsubst %,$(FUZZ_DIR)/obj/tests/fuzz/%.d,$(FUZZ_TARGETS))
