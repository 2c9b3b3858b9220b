# RISC-V 64 on QEMU virt: OpenSBI (-bios default) enters the kernel in S-mode.
# Included by the top-level Makefile when ARCH=riscv64.
TRIPLE := riscv64-unknown-none-elf

# The ABI (make variables, see the Makefile's header): RISCV_ABI=lp64 (default, soft-float: no FP
# register carries an argument, what this repository's kernel uses) or lp64d (double-float, the
# default of GCC's riscv64 Linux toolchains, so what a GCC-built kernel often is). The ELF header of every object records
# the choice and both GNU ld and ld.lld refuse to link objects of different float ABIs. The code
# uses no floating point under either (scripts/check_lib.sh checks it), so the choice is only
# the calling convention and the ELF flag. RISCV_MARCH: rv64gc plus Zicbom (cbo.clean/cbo.inval/
# cbo.flush); lp64d needs D in it (G includes it). The FPU is still enabled at boot (sstatus.FS)
# in case a kernel object uses FP instructions.
RISCV_ABI ?= lp64
RISCV_MARCH ?= rv64gc_zicbom
ifeq ($(RISCV_ABI),lp64)
else ifeq ($(RISCV_ABI),lp64d)
# The base and single-letter extensions come before the first '_' (rv64gc, rv64imafdc); G
# stands for IMAFD.
ifeq ($(findstring d,$(firstword $(subst _, ,$(patsubst rv64g%,rv64d%,$(RISCV_MARCH))))),)
$(error RISCV_ABI=lp64d needs the D extension in RISCV_MARCH (e.g. rv64gc_zicbom), not \
  RISCV_MARCH=$(RISCV_MARCH))
endif
else
$(error RISCV_ABI=$(RISCV_ABI): must be lp64 (soft-float, the default) or lp64d (double-float))
endif
ARCH_ABI_CXXFLAGS := -march=$(RISCV_MARCH) -mabi=$(RISCV_ABI)
ARCH_ABI_ASFLAGS := -march=$(RISCV_MARCH) -mabi=$(RISCV_ABI)

# What the code needs whatever the ABI. medany: the kernel is linked in the upper half
# (0xFFFFFFC0'80200000) and reached PC-relatively. No linker relaxation (no gp-relative
# addressing: gp is never set up).
ARCH_CXXFLAGS := -mcmodel=medany -mno-relax
# LLVM 19's RISC-V code generator cannot guarantee tail calls (include/dmakit/support/compiler.h); without this
# its backend aborts on the mapping fast path.
ARCH_CXXFLAGS += -DSUPPORT_NO_MUSTTAIL=1
ARCH_ASFLAGS := -mcmodel=medany -mno-relax
ARCH_LDFLAGS := -nostdlib -static --no-relax -z max-page-size=4096
# The port (its own in-VM tests are tests/qemu/riscv64/*.cc, linked into the test kernel only).
ARCH_SRCS := arch/riscv64/testkernel/arch_riscv64.cc arch/riscv64/testkernel/riscv64_platform.cc \
             arch/riscv64/testkernel/sv39_page_table.cc arch/riscv64/testkernel/trap.cc arch/riscv64/testkernel/sbi.cc \
             arch/riscv64/testkernel/ns16550.cc
ARCH_SRCS += arch/riscv64/testkernel/arch_io.cc arch/common/testkernel/no_port_io.cc
ARCH_SRCS += arch/riscv64/testkernel/smp.cc
# testkernel/percpu.h includes the arch's inline per-CPU accessor by this name.
ARCH_CXXFLAGS += -DTESTKERNEL_PERCPU_ARCH_H='"arch/riscv64/testkernel/percpu_arch.h"'
ARCH_SRCS += arch/riscv64/testkernel/imsic.cc arch/riscv64/testkernel/irq.cc
ARCH_ASM_SRCS := arch/riscv64/testkernel/boot.S
# The DmaOp with the cache-block instructions and its uncached remap (Svpbmt NC): part of
# libdma.a for this arch.
# riscv64_capi.cc builds that DmaOp for the C API's dmakit_platform_op_init (dma/capi.cc).
ARCH_DMA_SRCS := arch/riscv64/dma/riscv64_dma_op.cc arch/riscv64/dma/riscv64_uncached.cc \
                 arch/riscv64/dma/riscv64_capi.cc
# The RISC-V IOMMU driver (dmakit/arch/riscv_iommu.h): library code, like the DmaOp.
ARCH_DMA_SRCS += arch/riscv64/iommu/riscv_iommu.cc
LINKER_SCRIPT := linker/riscv64.ld
ARCH_SRCS += arch/riscv64/testkernel/iommu.cc
