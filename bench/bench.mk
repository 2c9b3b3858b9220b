# Builds the benchmark programs into $(BUILD)/bench (called by bench/run_bench.sh).
#
# The kernel's own sources (support/, mm/, dma/) and the host platform (arch/host/) are compiled
# here again, at -O2, without sanitizers, without DMA_DEBUG and without DMA_FAULT_INJECTION: the
# code a release kernel runs.

BUILD ?= build
LLVM_VER ?= 19
CXX := clang++-$(LLVM_VER)
OUT := $(BUILD)/bench
OBJ := $(OUT)/obj

WARNINGS := -Wall -Wextra -Wconversion -Wsign-conversion -Wshadow -Wthread-safety \
            -Wno-unused-parameter -Werror
# DWARF 4: the valgrind of Debian 12 cannot read clang 19's default DWARF 5.
CXXFLAGS := -std=c++20 -Iinclude -I. $(WARNINGS) -fno-exceptions -fno-rtti -O2 -gdwarf-4

LIB_SRCS := $(wildcard support/*.cc) $(wildcard mm/*.cc) $(wildcard dma/*.cc) \
            $(wildcard arch/host/*.cc)
COMMON_SRCS := bench/scenarios.cc bench/panic.cc bench/iommu_scenarios.cc bench/linux_iova.cc
LIB_OBJS := $(patsubst %.cc,$(OBJ)/%.o,$(LIB_SRCS) $(COMMON_SRCS))

all: $(OUT)/dma_bench $(OUT)/dma_ir

$(OBJ)/%.o: %.cc
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) -MMD -MP -c $< -o $@

$(OUT)/dma_bench: $(OBJ)/bench/dma_bench.o $(LIB_OBJS)
	$(CXX) $^ -lbenchmark -lpthread -o $@

$(OUT)/dma_ir: $(OBJ)/bench/ir_count.o $(LIB_OBJS)
	$(CXX) $^ -o $@

.PHONY: all
-include $(wildcard $(OBJ)/*/*.d $(OBJ)/*/*/*.d)
