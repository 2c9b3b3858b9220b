# x86-64 on QEMU q35: `-kernel` ELF with a PVH note, entered in 32-bit protected mode.
# Included by the top-level Makefile when ARCH=x86_64.
TRIPLE := x86_64-unknown-none-elf
# No SSE/x87/MMX in the kernel (their state is never set up or saved), no red zone (traps run on
# the interrupted stack).
ARCH_CXXFLAGS := -mno-red-zone -mgeneral-regs-only -mno-sse -mno-mmx -mno-80387 \
                 -fno-asynchronous-unwind-tables
# The code model (make variable, see the Makefile's header), which must suit the address the
# kernel is linked at: kernel (default; the test kernel is linked at 0xFFFFFFFF80200000) for the
# top 2 GiB, small for the low 2 GiB, large for anywhere (64-bit absolute addresses, bigger code).
X86_CMODEL ?= kernel
ifeq ($(filter $(X86_CMODEL),kernel small large),)
$(error X86_CMODEL=$(X86_CMODEL): must be kernel (the default), small or large)
endif
ARCH_ABI_CXXFLAGS := -mcmodel=$(X86_CMODEL)
ARCH_ABI_ASFLAGS :=
ARCH_ASFLAGS := -fno-asynchronous-unwind-tables
ARCH_LDFLAGS := -nostdlib -static -z max-page-size=4096 --no-relax
ARCH_SRCS := arch/x86_64/testkernel/x86_64_platform.cc arch/x86_64/testkernel/serial.cc arch/x86_64/testkernel/traps.cc \
             arch/x86_64/testkernel/cpu_features.cc arch/x86_64/testkernel/pvh.cc arch/x86_64/testkernel/paging.cc \
             arch/x86_64/testkernel/tsc_clock.cc arch/x86_64/testkernel/acpi.cc
ARCH_SRCS += arch/x86_64/testkernel/arch_io.cc
ARCH_SRCS += arch/x86_64/testkernel/lapic.cc arch/x86_64/testkernel/ioapic.cc arch/x86_64/testkernel/irq.cc arch/x86_64/testkernel/smp.cc
ARCH_ASM_SRCS := arch/x86_64/testkernel/boot.S arch/x86_64/testkernel/trap_entry.S
ARCH_ASM_SRCS += arch/x86_64/testkernel/ap_boot.S
# testkernel/percpu.h includes the arch's inline per-CPU accessor by this name.
ARCH_CXXFLAGS += -DTESTKERNEL_PERCPU_ARCH_H='"arch/x86_64/testkernel/percpu_arch.h"'
# The DmaOp with CLWB/CLFLUSHOPT/CLFLUSH and its uncached remap (PAT UC-): part of libdma.a for
# this arch.
# x86_64_capi.cc builds that DmaOp for the C API's dmakit_platform_op_init (dma/capi.cc).
ARCH_DMA_SRCS := arch/x86_64/dma/x86_64_dma_op.cc arch/x86_64/dma/x86_64_uncached.cc \
                 arch/x86_64/dma/x86_64_capi.cc
# The Intel VT-d driver (dmakit/arch/vtd.h): library code, part of libdma.a for this arch.
ARCH_DMA_SRCS += arch/x86_64/iommu/vtd_unit.cc
LINKER_SCRIPT := linker/x86_64.ld
ARCH_SRCS += arch/x86_64/testkernel/iommu.cc
