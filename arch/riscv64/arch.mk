# RISC-V 64 on QEMU virt: OpenSBI (-bios default) enters the kernel in S-mode.
# Included by the top-level Makefile when ARCH=riscv64.
TRIPLE := riscv64-unknown-none-elf
# rv64gc plus Zicbom (cbo.clean/cbo.inval/cbo.flush); lp64 soft-float ABI, the FPU is still
# enabled at boot (sstatus.FS) in case the compiler picks FP instructions. medany: the kernel is
# linked in the upper half (0xFFFFFFC0'80200000) and reached PC-relatively. No linker relaxation
# (no gp-relative addressing: gp is never set up).
ARCH_CXXFLAGS := -march=rv64gc_zicbom -mabi=lp64 -mcmodel=medany -mno-relax
# LLVM 19's RISC-V code generator cannot guarantee tail calls (support/compiler.h).
ARCH_CXXFLAGS += -DSUPPORT_NO_MUSTTAIL=1
ARCH_ASFLAGS := -march=rv64gc_zicbom -mabi=lp64 -mcmodel=medany -mno-relax
ARCH_LDFLAGS := -nostdlib -static --no-relax -z max-page-size=4096
# The port, and its own in-VM tests (tests/qemu/riscv64/, outside the common tests/qemu/*.cc).
ARCH_SRCS := arch/riscv64/arch_riscv64.cc arch/riscv64/riscv64_platform.cc \
             arch/riscv64/sv39_page_table.cc arch/riscv64/trap.cc arch/riscv64/sbi.cc \
             arch/riscv64/ns16550.cc \
             tests/qemu/riscv64/riscv64_arch_test.cc
ARCH_SRCS += arch/riscv64/arch_io.cc arch/common/no_port_io.cc
ARCH_ASM_SRCS := arch/riscv64/boot.S
# The DmaOp with the cache-block instructions and its uncached remap (Svpbmt NC): part of
# libdma.a for this arch.
ARCH_DMA_SRCS := arch/riscv64/riscv64_dma_op.cc arch/riscv64/riscv64_uncached.cc
LINKER_SCRIPT := linker/riscv64.ld
