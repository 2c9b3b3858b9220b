// The platform's DmaOp for the minimal bring-ups (minimal_identity.cc, minimal_higher_half.cc):
// the one part of them that depends on the architecture. Each architecture's DmaOp is a
// constinit static, set up by its init() with what the kernel knows about the CPU's caches.
//
// What the kernel tells each of them:
//   AArch64  the data-cache line size (AArch64DmaOp::hardware_line_size() reads CTR_EL0).
//   RISC-V   which cache-block instructions are usable (Riscv64DmaOp::CacheOps): Zicbom only if
//            the firmware or the kernel set menvcfg.CBCFE (and CBIE for cbo.inval), with the block
//            size from the device tree ("riscv,cbom-block-size"). Without them, as here, the
//            library executes no cache instruction and treats the platform as coherent.
//   x86-64   the line size (CPUID.1:EBX[15:8] * 8) and the best flush instructions CPUID offers
//            (CLFLUSH exists on every x86-64 CPU; CLFLUSHOPT and CLWB are faster).
// kPlatformCoherent: whether the machine's devices snoop the CPU caches (DeviceDma's default).
//
// The host test (tests/host/examples/minimal_bring_up_test.cc) builds the examples with
// DMAKIT_EXAMPLE_HOST and supplies the host backend's DmaOp, over a model of a non-coherent cache.
#pragma once

#include "dmakit/kernel_dma_op.h"
#include "dmakit/support/result.h"
#if defined(DMAKIT_EXAMPLE_HOST)
#elif defined(__aarch64__)
#include "dmakit/arch/aarch64_dma_op.h"
#elif defined(__riscv)
#include "dmakit/arch/riscv64_dma_op.h"
#elif defined(__x86_64__)
#include "dmakit/arch/x86_64_dma_op.h"
#endif

namespace example {

#if defined(DMAKIT_EXAMPLE_HOST)

inline constexpr bool kPlatformCoherent = false;
// Defined by the host test: a HostDmaOp over the simulated RAM that cfg.ram describes.
Result<KernelDmaOp*> start_platform_dma_op(const KernelDmaOp::Config& cfg);

#elif defined(__aarch64__)

inline constexpr bool kPlatformCoherent = false;  // QEMU virt: devices do not snoop.
inline constinit AArch64DmaOp g_platform_dma_op;
inline Result<KernelDmaOp*> start_platform_dma_op(const KernelDmaOp::Config& cfg) {
  TRY(g_platform_dma_op.init(cfg, AArch64DmaOp::hardware_line_size()));
  return static_cast<KernelDmaOp*>(&g_platform_dma_op);
}

#elif defined(__riscv)

inline constexpr bool kPlatformCoherent = true;  // Forced anyway without Zicbom.
inline constinit Riscv64DmaOp g_platform_dma_op;
inline Result<KernelDmaOp*> start_platform_dma_op(const KernelDmaOp::Config& cfg) {
  Riscv64DmaOp::CacheOps ops;  // No Zicbom enabled: no cache instruction may run.
  TRY(g_platform_dma_op.init(cfg, ops));
  return static_cast<KernelDmaOp*>(&g_platform_dma_op);
}

#elif defined(__x86_64__)

inline constexpr bool kPlatformCoherent = true;  // PCI devices snoop on x86.
inline constinit X86DmaOp g_platform_dma_op;
inline Result<KernelDmaOp*> start_platform_dma_op(const KernelDmaOp::Config& cfg) {
  TRY(g_platform_dma_op.init(cfg, 64, X86DmaOp::FlushInsn::kClflush,
                             X86DmaOp::InvalInsn::kClflush));
  return static_cast<KernelDmaOp*>(&g_platform_dma_op);
}

#else
#error "no DmaOp for this architecture"
#endif

}  // namespace example
