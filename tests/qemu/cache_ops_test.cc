// In-VM tests of the platform DmaOp's cache maintenance: flush / invalidate / flush_invalidate
// over unaligned ranges (data in the range and the neighbours sharing its edge lines survive),
// and at the very first and last bytes of every RAM range (nothing outside RAM is touched: on a
// machine that maps only RAM, a line beyond it would fault).
#include "testkernel/kernel_env.h"
#include "tests/qemu/ktest.h"
#include "tests/qemu/test_util.h"

using ktest_util::Pages;

namespace {

struct Span {
  size_t off;
  size_t len;
};

// Offsets relative to a page-aligned buffer, in units of bytes; `line` is added where marked.
void spans_for(size_t line, Span* out, size_t* n) {
  const Span s[] = {
      {0, 1},           {1, 1},    {3, 61},         {line - 1, 2}, {0, line},     {1, line},
      {line, line * 3}, {5, 4000}, {17, 8192 - 40}, {4096 - 3, 6}, {line + 7, 0}, {0, 3 * 4096},
  };
  *n = sizeof(s) / sizeof(s[0]);
  for (size_t i = 0; i < *n; ++i) out[i] = s[i];
}

enum class Op { kFlush, kInvalidate, kFlushInvalidate };

void apply(Op op, const void* p, size_t n) {
  KernelDmaOp* d = kernel_env().dma;
  switch (op) {
    case Op::kFlush:
      d->flush(p, n);
      break;
    case Op::kInvalidate:
      d->invalidate(p, n);
      break;
    case Op::kFlushInvalidate:
      d->flush_invalidate(p, n);
      break;
  }
}

// For each span: the whole buffer is written and cleaned (memory holds it); then the bytes
// outside the span are rewritten (dirty in the cache only) and the op runs over the span. Bytes
// in the span must still read as memory holds them, and every neighbour must keep its new value:
// an invalidate that discarded a shared edge line would lose them.
void check_op(ktest::Context& ktest_ctx, Op op) {
  Pages pages(2);  // 16 KiB
  KREQUIRE_TRUE(pages.ok());
  uint8_t* buf = pages.va();
  const size_t total = 4 * 4096;
  size_t line = arch::cache_line_size();
  KREQUIRE_TRUE(line >= 16 && line <= 512);
  Span spans[16];
  size_t n = 0;
  spans_for(line, spans, &n);
  for (size_t i = 0; i < n; ++i) {
    Span s = spans[i];
    size_t base = 128;  // Leaves room for neighbours before the span.
    ktest_util::fill_pattern(buf, total, 1);
    kernel_env().dma->flush(buf, total);
    for (size_t j = 0; j < total; ++j) {
      if (j < base + s.off || j >= base + s.off + s.len) buf[j] = ktest_util::pattern_byte(2, j);
    }
    apply(op, buf + base + s.off, s.len);
    size_t bad_in = 0;
    size_t bad_out = 0;
    for (size_t j = 0; j < total; ++j) {
      bool inside = j >= base + s.off && j < base + s.off + s.len;
      uint8_t want = ktest_util::pattern_byte(inside ? 1 : 2, j);
      if (buf[j] != want) ++(inside ? bad_in : bad_out);
    }
    if (bad_in != 0 || bad_out != 0) {
      ktest_ctx.fail(__FILE__, __LINE__, "span +%zu len %zu: %zu bytes inside, %zu outside wrong",
                     s.off, s.len, bad_in, bad_out);
    }
  }
}

// Runs every op over [p, p + n) of memory the test does not own (reserved RAM: the device tree,
// allocator metadata...): contents are saved around it and must come out unchanged.
void ops_on_foreign_bytes(ktest::Context& ktest_ctx, uint8_t* p, size_t n) {
  // RAM the firmware keeps for itself ("no-map" reserved memory: OpenSBI's, on riscv64) is not in
  // the direct map; there is nothing there the kernel may touch.
  if (arch::mapping_attribute(p) == nullptr || arch::mapping_attribute(p + n - 1) == nullptr) {
    return;
  }
  uint8_t saved[256];
  KREQUIRE_TRUE(n <= sizeof(saved));
  for (size_t i = 0; i < n; ++i) saved[i] = p[i];
  KernelDmaOp* d = kernel_env().dma;
  d->flush(p, n);
  d->flush_invalidate(p, n);
  d->flush(p, n);  // Memory holds the bytes, so the invalidate below discards nothing new.
  d->invalidate(p, n);
  size_t bad = 0;
  for (size_t i = 0; i < n; ++i) bad += p[i] != saved[i];
  KEXPECT_EQ(bad, 0u);
}

}  // namespace

KTEST(cache_flush_unaligned_ranges) {
  check_op(ktest_ctx, Op::kFlush);
}
KTEST(cache_invalidate_unaligned_ranges) {
  check_op(ktest_ctx, Op::kInvalidate);
}
KTEST(cache_flush_invalidate_unaligned_ranges) {
  check_op(ktest_ctx, Op::kFlushInvalidate);
}

KTEST(cache_ops_at_the_ends_of_ram) {
  const KernelEnv& env = kernel_env();
  for (size_t i = 0; i < env.boot->num_ram; ++i) {
    const PhysRange& r = env.boot->ram[i];
    if (r.size < 4096) continue;
    auto* first = static_cast<uint8_t*>(env.phys_to_virt(r.base));
    auto* end = static_cast<uint8_t*>(env.phys_to_virt(r.end()));
    ops_on_foreign_bytes(ktest_ctx, first, 1);
    ops_on_foreign_bytes(ktest_ctx, first, 100);
    ops_on_foreign_bytes(ktest_ctx, first + 1, 3);
    ops_on_foreign_bytes(ktest_ctx, end - 1, 1);
    ops_on_foreign_bytes(ktest_ctx, end - 3, 3);
    ops_on_foreign_bytes(ktest_ctx, end - 100, 100);
    ops_on_foreign_bytes(ktest_ctx, end - 200, 199);
  }
}

KTEST(cache_ops_zero_size_do_nothing) {
  // Size 0 must not touch the address at all, even one that is not mapped.
  // (Reaching the end is the test: a touch would fault and panic the run.)
  auto* unmapped = reinterpret_cast<const void*>(kernel_env().direct_map_offset - 4096 * 3 + 5);
  KREQUIRE_TRUE(arch::mapping_attribute(unmapped) == nullptr);
  KernelDmaOp* d = kernel_env().dma;
  d->flush(unmapped, 0);
  d->invalidate(unmapped, 0);
  d->flush_invalidate(unmapped, 0);
}
