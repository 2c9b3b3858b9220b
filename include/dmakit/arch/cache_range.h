// Cache maintenance over a byte range, one line at a time: the part of every architecture's
// DmaOp cache methods that decides which operation runs on which line. Only the instructions
// themselves differ between architectures; each supplies them as a small "line ops" type
// (checked against the LineOps concept below), and this walk is the same code on all of them.
// The host build instantiates it too, with line ops that drive the cache model
// (arch/host/model_line_ops.h), so the host tests run the very decisions the kernels make.
//
// The scheme, for the range [addr, addr + size), any alignment, size may be 0 (nothing runs, not
// even a barrier), not wrapping (addr + size - 1 is the last byte; the range may end at the top
// of the address space, so the walk compares line addresses with the last line rather than with
// an end pointer that would wrap to 0):
//   kClean:           clean every line the range touches;
//   kCleanInvalidate: clean and invalidate every line the range touches;
//   kInvalidate:      invalidate the lines that lie wholly inside the range; a line only partly
//                     inside (first or last) also holds bytes of a neighbour, which must survive:
//                     clean and invalidate it. Line ops without an invalidate-only primitive
//                     (x86), or whose invalidate cannot be used now (RISC-V when cbo.inval traps),
//                     clean and invalidate every line instead: correct, only slower.
// Before the first line: ops.before(op) (orders earlier CPU accesses before the maintenance);
// after the last: ops.after(op) (the maintenance completes before the caller's next access, e.g.
// the MMIO write that starts the device).
//
// Cost: one primitive per line touched, plus the two barriers. Everything here is forced inline,
// so each DmaOp method's own body holds its instructions (tests/qemu/run_qemu.py checks that in
// the kernel's disassembly).
#pragma once

#include "dmakit/support/assert.h"
#include "dmakit/support/types.h"

namespace cache_range {

// std::same_as without <concepts>: the kernels build with -nostdinc++.
template <typename T, typename U>
concept Same = __is_same(T, U);

enum class CacheOp : uint8_t { kClean, kInvalidate, kCleanInvalidate };

// What every architecture supplies. `line_size()` is a power of two; each primitive takes the
// address of a line's first byte and acts on that one line; `before` / `after` are the barriers
// around a walk of operation `op`.
template <typename L>
concept LineOps = requires(L& ops, const L& cops, uintptr_t line_addr, CacheOp op) {
  { cops.line_size() } -> Same<size_t>;
  { ops.clean(line_addr) } -> Same<void>;
  { ops.clean_invalidate(line_addr) } -> Same<void>;
  { ops.before(op) } -> Same<void>;
  { ops.after(op) } -> Same<void>;
};

// Line ops that also have an invalidate-only primitive, and say whether it may be used now.
template <typename L>
concept InvalidatingLineOps = LineOps<L> && requires(L& ops, const L& cops, uintptr_t line_addr) {
  { ops.invalidate(line_addr) } -> Same<void>;
  { cops.invalidate_usable() } -> Same<bool>;
};

// Runs `op` over [addr, addr + size) as described above.
// Preconditions: size == 0 or addr + (size - 1) does not wrap; ops.line_size() a power of two.
// Calling context: anything the primitives allow (the kernels' may run with interrupts off).
template <LineOps L>
[[gnu::always_inline]] inline void maintain(L& ops, CacheOp op, uintptr_t addr, size_t size) {
  if (size == 0) return;
  const uintptr_t line = ops.line_size();
  const uintptr_t mask = line - 1;
  const uintptr_t last_byte = addr + (size - 1);
  KDEBUG_ASSERT(last_byte >= addr, "cache maintenance range wraps");
  const uintptr_t first = addr & ~mask;
  const uintptr_t last = last_byte & ~mask;
  bool whole_lines_invalidate = false;
  if constexpr (InvalidatingLineOps<L>) {
    whole_lines_invalidate = op == CacheOp::kInvalidate && ops.invalidate_usable();
  }
  const bool head_partial = (addr & mask) != 0;
  const bool tail_partial = (last_byte & mask) != mask;
  ops.before(op);
  for (uintptr_t p = first;; p += line) {
    if (op == CacheOp::kClean) {
      ops.clean(p);
    } else if (whole_lines_invalidate && !(p == first && head_partial) &&
               !(p == last && tail_partial)) {
      if constexpr (InvalidatingLineOps<L>) ops.invalidate(p);
    } else {
      ops.clean_invalidate(p);
    }
    if (p == last) break;
  }
  ops.after(op);
}

// The same with a pointer, as the DmaOp methods receive it.
template <LineOps L>
[[gnu::always_inline]] inline void maintain(L& ops, CacheOp op, const void* addr, size_t size) {
  maintain(ops, op, reinterpret_cast<uintptr_t>(addr), size);
}

}  // namespace cache_range
