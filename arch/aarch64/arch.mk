# AArch64 (QEMU virt) fragment of the Makefile: see arch/aarch64/*.h for the port.
TRIPLE := aarch64-unknown-none-elf
# No FP/SIMD registers in kernel code (no lazy FP state to manage); small code model (the image
# and its data are within 4 GiB of each other, wherever it is linked). There is no ABI to choose:
# -mgeneral-regs-only only keeps the compiler off the FP/SIMD registers, the calling convention is
# AAPCS64's, and since no floating-point value crosses the library's API (scripts/check_lib.sh
# checks that no FP/SIMD register is used at all) libdma.a links with hard-float kernels too;
# AArch64 ELF objects carry no float-ABI flag for a linker to refuse.
ARCH_CXXFLAGS := -mgeneral-regs-only -mcmodel=small -fno-asynchronous-unwind-tables
ARCH_ABI_CXXFLAGS :=
ARCH_ABI_ASFLAGS :=
ARCH_ASFLAGS := -D__ASSEMBLY__
ARCH_LDFLAGS := -nostdlib -static -z max-page-size=4096 -z norelro --no-dynamic-linker
ARCH_SRCS := arch/aarch64/testkernel/boot.cc arch/aarch64/testkernel/mmu.cc arch/aarch64/testkernel/platform.cc \
             arch/aarch64/testkernel/traps.cc
ARCH_SRCS += arch/aarch64/testkernel/arch_io.cc arch/common/testkernel/no_port_io.cc
ARCH_SRCS += arch/aarch64/testkernel/smp.cc
# testkernel/percpu.h includes the arch's inline per-CPU accessor by this name.
ARCH_CXXFLAGS += -DTESTKERNEL_PERCPU_ARCH_H='"arch/aarch64/testkernel/percpu_arch.h"'
ARCH_SRCS += arch/aarch64/testkernel/gic.cc arch/aarch64/testkernel/gic_v3.cc arch/aarch64/testkernel/irq.cc
ARCH_ASM_SRCS := arch/aarch64/testkernel/entry.S
# The arch's DmaOp and its uncached remap (Normal-NC): linked into the kernel and into libdma.a.
# aarch64_capi.cc builds that DmaOp for the C API's dmakit_platform_op_init (dma/capi.cc).
ARCH_DMA_SRCS := arch/aarch64/dma/aarch64_dma_op.cc arch/aarch64/dma/aarch64_uncached.cc \
                 arch/aarch64/dma/aarch64_capi.cc
LINKER_SCRIPT := linker/aarch64.ld
ARCH_SRCS += arch/aarch64/testkernel/iommu.cc
ARCH_DMA_SRCS += arch/aarch64/iommu/smmuv3.cc
