// The spin-wait hint: what a CPU executes between two polls of a lock that another CPU holds.
// It lets the core save power and give its pipeline to a sibling hardware thread, and on x86-64
// avoids the memory-order machine clear when the lock is released. Under include/dmakit/arch/:
// the architecture conditionals of the support library's lock live here, not in support/.
#pragma once

// SUPPORT_PRESERVE_MOST: the calling convention of the spinlock's out-of-line paths (the ones
// that call the kernel's interrupt hooks). The callee saves every register it uses, so a caller
// whose inline fast path only might call it keeps its values in scratch registers and needs no
// frame of its own: with no hooks installed, a lock costs its test of the hook and nothing more.
// Clang's preserve_most, where its code generators support it (x86-64, AArch64); elsewhere an
// ordinary call, which costs the callers a few register saves.
#if defined(__clang__) && (defined(__x86_64__) || defined(__aarch64__))
#define SUPPORT_PRESERVE_MOST [[clang::preserve_most]]
#else
#define SUPPORT_PRESERVE_MOST
#endif

namespace support {

[[gnu::always_inline]] inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __asm__ volatile("pause" ::: "memory");
#elif defined(__aarch64__)
  __asm__ volatile("yield" ::: "memory");
#elif defined(__riscv)
  // Zihintpause PAUSE: FENCE with pred = W, succ = 0, fm = 0 (imm[11:0] = 0x010). Spelled as a
  // raw I-type instruction so that assemblers without Zihintpause accept it; a hart without the
  // extension executes it as a no-op fence.
  __asm__ volatile(".insn i 0x0F, 0, x0, x0, 0x010" ::: "memory");
#else
  __asm__ volatile("" ::: "memory");  // No hint known for this target: a compiler barrier.
#endif
}

}  // namespace support
